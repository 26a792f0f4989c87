"""A simulated robot: a MuJoCo task stepped in real time, with injected observation and inference latency.

``SimulatedRobot`` runs the environment in its own thread at the simulator's rate (one ``env.step`` per
period of wall time, catching up when late) with a zero-order hold on the last commanded action, exactly as
a motor controller would; ``get_obs`` returns the observation that was current ``obs_latency_s`` ago. Wrap a
policy in ``InjectedLatency`` to add inference latency. ``run_episode`` ties both to a ``ControlLoop``.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import numpy as np

from diffctl.deploy.loop import ControlLoop, LoopConfig


class SimulatedRobot:
    """Real-time stepping of ``make_env(task)``; ``get_obs`` / ``apply`` are the controller's interface."""

    def __init__(
        self,
        task: str = "maze2d-umaze",
        *,
        seed: int = 0,
        rate_hz: float | None = None,
        obs_latency_s: float = 0.0,
        clock: Any = time.monotonic,
    ) -> None:
        from diffctl.envs.registry import get_task, make_env

        if obs_latency_s < 0:
            raise ValueError(f"obs_latency_s must be >= 0, got {obs_latency_s}")
        self.spec = get_task(task)
        self.env = make_env(task, seed=seed)
        self.seed = seed
        dt = _env_dt(self.env)
        self.rate_hz = float(rate_hz or 1.0 / dt)
        if self.rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self.obs_latency_s, self.clock = float(obs_latency_s), clock
        self.action_dim = int(np.prod(self.env.action_space.shape))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----- controller interface -------------------------------------------------------------------------
    def get_obs(self) -> np.ndarray:
        """The newest observation at least ``obs_latency_s`` old (the oldest kept one if none is)."""
        cutoff = self.clock() - self.obs_latency_s
        with self._lock:
            chosen = self._history[0]
            for stamp, obs in self._history:
                if stamp > cutoff:
                    break
                chosen = (stamp, obs)
            self.obs_ages.append(self.clock() - chosen[0])
            return chosen[1].copy()

    def apply(self, action: np.ndarray) -> None:
        a = np.asarray(action, dtype=np.float32).reshape(self.action_dim)
        if not np.isfinite(a).all():
            raise ValueError(f"robot command must be finite, got {a}")
        with self._lock:
            self._command = a

    # ----- simulation thread ----------------------------------------------------------------------------
    def start(self) -> SimulatedRobot:
        obs, _ = self.env.reset(seed=self.seed)
        self._command = np.zeros(self.action_dim, np.float32)
        keep = max(4, int(self.obs_latency_s * self.rate_hz) + 4)
        self._history: collections.deque[tuple[float, np.ndarray]] = collections.deque(maxlen=keep)
        self._history.append((self.clock(), np.asarray(obs, np.float32)))
        self.steps, self.total_reward, self.success, self.done, self.late_steps = 0, 0.0, False, False, 0
        self.obs_ages: list[float] = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="diffctl-sim", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        t0 = self.clock()
        while not self._stop.is_set() and not self.done:
            target = t0 + (self.steps + 1) * period
            wait = target - self.clock()
            if wait > 0:
                time.sleep(wait)
            else:
                self.late_steps += 1
            with self._lock:
                command = self._command
            obs, reward, terminated, truncated, info = self.env.step(command)
            with self._lock:
                self._history.append((self.clock(), np.asarray(obs, np.float32)))
                self.steps += 1
                self.total_reward += float(reward)
                self.success = self.success or bool(info.get("success", False))
                self.done = bool(terminated or truncated)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> SimulatedRobot:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        ages = np.asarray(self.obs_ages) * 1e3
        return {
            "sim_steps": self.steps, "return": self.total_reward, "success": self.success,
            "done": self.done, "late_sim_steps": self.late_steps,
            "obs_age_ms_p50": float(np.median(ages)) if ages.size else float("nan"),
        }  # fmt: skip


class InjectedLatency:
    """A policy wrapper that sleeps ``seconds`` (plus optional uniform ``jitter``) before each inference."""

    def __init__(self, policy: Any, seconds: float, jitter: float = 0.0, seed: int = 0) -> None:
        if seconds < 0 or jitter < 0:
            raise ValueError(f"latency and jitter must be >= 0, got {seconds}, {jitter}")
        self.policy, self.seconds, self.jitter = policy, float(seconds), float(jitter)
        self._rng = np.random.default_rng(seed)
        if callable(getattr(policy, "predict_chunk", None)):
            self.predict_chunk = self._predict_chunk
        if callable(getattr(policy, "act", None)):
            self.act = self._act

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def _wait(self) -> None:
        time.sleep(self.seconds + (self._rng.uniform(0, self.jitter) if self.jitter else 0.0))

    def _predict_chunk(self, *args: Any, **kwargs: Any) -> Any:
        self._wait()
        return self.policy.predict_chunk(*args, **kwargs)

    def _act(self, obs: Any) -> Any:
        self._wait()
        return self.policy.act(obs)


def _env_dt(env: Any) -> float:
    """The control period of a gymnasium MuJoCo env (PointMaze keeps it on its inner point env)."""
    inner = env.unwrapped
    for candidate in (inner, getattr(inner, "point_env", None)):
        dt = getattr(candidate, "dt", None)
        if dt:
            return float(dt)
    raise ValueError(f"cannot find the control period (dt) of {type(inner).__name__}")


def run_episode(
    policy: Any,
    task: str = "maze2d-umaze",
    *,
    seed: int = 0,
    obs_latency_s: float = 0.0,
    inference_latency_s: float = 0.0,
    max_seconds: float | None = None,
    config: LoopConfig | None = None,
) -> dict[str, Any]:
    """One real-time episode of ``policy`` on the simulated robot; loop and robot statistics together."""
    if hasattr(policy, "reset"):
        policy.reset()
    agent = InjectedLatency(policy, inference_latency_s) if inference_latency_s > 0 else policy
    robot = SimulatedRobot(task, seed=seed, obs_latency_s=obs_latency_s)
    cfg = config or LoopConfig(rate_hz=robot.rate_hz)
    seconds = max_seconds or robot.spec.max_episode_steps / robot.rate_hz
    with robot:
        loop = ControlLoop(agent, robot.get_obs, robot.apply, cfg)
        result = loop.run(duration_s=seconds)
    return {**robot.stats(), **result.summary()}
