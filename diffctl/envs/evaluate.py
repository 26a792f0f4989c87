"""Closed-loop evaluation: ``evaluate(agent, task, episodes, seed)`` -> success, return, score, act latency.

Episodes run in worker processes (forkserver), each holding its own pickled copy of the agent and acting at
batch 1 with one torch thread, so the measured ``act`` latency is what one controller would see. Episode
``i`` is seeded from ``(seed, i)`` alone (environment reset, numpy and torch global generators, and
``agent.seed`` when the agent has one), so results do not depend on the number of workers. Maze tasks follow
D4RL: the goal is fixed at the task's evaluation cell for the whole episode, the episode runs to its limit,
the reward is 1 per step within 0.5 of the goal, and success means the goal was reached. Fetch tasks succeed
when the last step of the episode does (the object, or the gripper for Reach, within 5 cm of the goal).

The video and the trajectory plot are optional outputs: when their backend is missing (imageio /
imageio-ffmpeg, matplotlib) or fails (rendering, the writer), ``evaluate`` emits one warning naming what was
skipped and why, and still returns its results, with ``video_path`` / ``plot_path`` None.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys
import time
import warnings
from typing import Any

import numpy as np

from diffctl.envs.registry import TaskSpec, get_task, make_env, normalized_score

_WORKER: dict[str, Any] = {}


def episode_seed(seed: int, index: int) -> int:
    """The seed of episode ``index`` of an evaluation with ``seed`` (independent of worker count)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def _seed_everything(agent: Any, value: int) -> None:
    np.random.seed(value)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(value)
    seed_fn = getattr(agent, "seed", None)
    if callable(seed_fn):
        seed_fn(value)


def _one_line(err: BaseException | str) -> str:
    """An error as one line of text (some writers raise multi-line messages)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if isinstance(err, BaseException) else text


def _skipped(what: str, path: Any, reason: BaseException | str) -> None:
    """One warning line: which optional output of ``evaluate`` was skipped, and why (points at its caller)."""
    warnings.warn(
        f"evaluate: {what} {os.fspath(path)} skipped ({_one_line(reason)}); the evaluation results are kept",
        stacklevel=3,
    )


def _reset_options(spec: TaskSpec, goal_cell: Any) -> dict[str, Any] | None:
    if not spec.is_maze:
        return None
    cell = spec.eval_goal_cell if goal_cell == "d4rl" else goal_cell
    return None if cell is None else {"goal_cell": np.asarray(cell, dtype=np.int64)}


def run_episode(
    agent: Any,
    env: Any,
    spec: TaskSpec,
    seed: int,
    index: int,
    goal_cell: Any = "d4rl",
    record: bool = False,
    frame_stride: int = 2,
) -> dict[str, Any]:
    """One episode to termination or the time limit; returns return, success, length, latencies (s),
    the xy trajectory and goal for mazes, and every ``frame_stride``-th rendered frame when ``record``.

    Frames are optional: when ``env.render`` fails the episode goes on unrecorded, with ``frames`` empty and
    the error in ``render_error``.
    """
    ep_seed = episode_seed(seed, index)
    _seed_everything(agent, ep_seed)
    obs, info = env.reset(seed=ep_seed, options=_reset_options(spec, goal_cell))
    agent.reset()
    latencies: list[float] = []
    frames: list[Any] = []
    render_error: str | None = None

    def capture() -> None:
        nonlocal record, render_error
        try:
            frames.append(env.render())
        except Exception as err:
            record, render_error = False, _one_line(err)
            frames.clear()

    if record:
        capture()
    xy = [np.asarray(obs[:2], dtype=np.float64)] if spec.is_maze else []
    total, success, terminated, truncated = 0.0, False, False, False
    while not (terminated or truncated):
        start = time.perf_counter()
        action = agent.act(obs)
        latencies.append(time.perf_counter() - start)
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (spec.action_dim,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"agent.act returned {action!r}; {spec.name} expects {spec.action_dim} finite numbers "
                "in [-1, 1]"
            )
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        success = success or bool(info.get("success", info.get("is_success", False)))
        if spec.is_maze:
            xy.append(np.asarray(obs[:2], dtype=np.float64))
        if record and (len(latencies) % frame_stride == 0 or terminated or truncated):
            capture()
    if spec.kind == "locomotion":
        success = not terminated
    elif spec.kind == "fetch":  # gymnasium-robotics' protocol: success is the last step's
        success = bool(info.get("success", False))
    result: dict[str, Any] = {
        "index": index,
        "return": total,
        "success": bool(success),
        "length": len(latencies),
        "latencies": np.asarray(latencies),
    }
    if spec.is_maze:
        result["trajectory"] = np.stack(xy).astype(np.float32)
        result["goal"] = np.asarray(info["goal"], dtype=np.float32)
    if record or render_error is not None:
        result["frames"] = frames
    if render_error is not None:
        result["render_error"] = render_error
    return result


def _worker_init(agent_bytes: bytes, task: str, env_kwargs: dict[str, Any]) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    agent = pickle.loads(agent_bytes)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _WORKER.update(agent=agent, task=task, env_kwargs=env_kwargs, envs={})


def _local_init(agent: Any, task: str, env_kwargs: dict[str, Any]) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    _WORKER.update(agent=agent, task=task, env_kwargs=env_kwargs, envs={})


def _env(render: bool) -> Any:
    envs = _WORKER["envs"]
    if render not in envs:
        envs[render] = make_env(
            _WORKER["task"], render_mode="rgb_array" if render else None, **_WORKER["env_kwargs"]
        )
    return envs[render]


def _worker_episode(job: tuple[int, int, Any, bool]) -> dict[str, Any]:
    seed, index, goal_cell, record = job
    spec = get_task(_WORKER["task"])
    return run_episode(_WORKER["agent"], _env(record), spec, seed, index, goal_cell, record)


def _mp_context() -> Any:
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def _latency_stats(latencies: np.ndarray) -> dict[str, float]:
    ms = latencies * 1e3
    if ms.size == 0:
        return {
            "act_latency_ms_p50": float("nan"),
            "act_latency_ms_p99": float("nan"),
            "act_latency_ms_mean": float("nan"),
        }
    return {
        "act_latency_ms_p50": float(np.percentile(ms, 50)),
        "act_latency_ms_p99": float(np.percentile(ms, 99)),
        "act_latency_ms_mean": float(ms.mean()),
    }


def evaluate(
    agent: Any,
    task: str,
    episodes: int = 50,
    seed: int = 0,
    n_workers: int | None = None,
    video_path: str | os.PathLike[str] | None = None,
    plot_path: str | os.PathLike[str] | None = None,
    goal_cell: Any = "d4rl",
    video_fps: int = 25,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Roll ``agent`` out for ``episodes`` episodes of ``task`` and summarize.

    ``n_workers`` processes (default ``min(2, episodes)``) each get a pickled copy of the agent; with 0
    the agent itself runs in this process. ``goal_cell`` (mazes): ``"d4rl"`` fixes the goal at D4RL's
    evaluation cell, ``None`` draws a goal per episode, or a (row, col). ``video_path`` (.mp4/.gif)
    records episode 0; ``plot_path`` (mazes) draws every trajectory over the maze. Returns
    success_rate, mean_return, normalized_score (None when the task has no D4RL reference),
    act_latency_ms_{p50,p99,mean} and the per-episode lists, plus ``video_path`` / ``plot_path`` when they
    were asked for: the written file, or None when it was skipped (one warning says why).
    """
    spec = get_task(task)
    if not hasattr(agent, "act") or not hasattr(agent, "reset"):
        raise ValueError(f"agent must have reset() and act(obs); got {type(agent).__name__}")
    if int(episodes) < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    episodes = int(episodes)
    if plot_path is not None and not spec.is_maze:
        raise ValueError(f"plot_path: trajectory plots exist for maze tasks only, not {spec.name!r}")
    video_skip: BaseException | str | None = None
    if video_path is not None:
        from diffctl.envs.video import check_video_path, video_backend

        check_video_path(video_path)
        try:
            video_backend(video_path)  # checked before the episodes, so none renders frames for nothing
        except ImportError as err:
            video_skip = err
    workers = min(2, episodes) if n_workers is None else min(int(n_workers), episodes)
    if workers < 0:
        raise ValueError(f"n_workers must be >= 0, got {n_workers}")
    env_kwargs = dict(env_kwargs or {})
    record = video_path is not None and video_skip is None
    jobs = [(int(seed), i, goal_cell, record and i == 0) for i in range(episodes)]
    started = time.perf_counter()
    if workers == 0:
        _local_init(agent, spec.name, env_kwargs)
        try:
            results = [_worker_episode(job) for job in jobs]
        finally:
            for env in _WORKER.get("envs", {}).values():
                env.close()
            _WORKER.clear()
    else:
        with _mp_context().Pool(workers, _worker_init, (pickle.dumps(agent), spec.name, env_kwargs)) as pool:
            results = pool.map(_worker_episode, jobs, chunksize=1)
    wall = time.perf_counter() - started
    results.sort(key=lambda r: r["index"])
    returns = [r["return"] for r in results]
    successes = [r["success"] for r in results]
    mean_return = float(np.mean(returns))
    has_ref = spec.ref_min_score is not None
    out: dict[str, Any] = {
        "task": spec.name,
        "episodes": episodes,
        "seed": int(seed),
        "success_rate": float(np.mean(successes)),
        "mean_return": mean_return,
        "normalized_score": float(normalized_score(spec.name, mean_return)) if has_ref else None,
        **_latency_stats(np.concatenate([r["latencies"] for r in results])),
        "returns": returns,
        "successes": successes,
        "lengths": [r["length"] for r in results],
        "normalized_scores": [float(normalized_score(spec.name, r)) for r in returns] if has_ref else None,
        "n_workers": workers,
        "wall_seconds": wall,
    }
    if spec.is_maze:
        out["goal_threshold"] = spec.success_threshold
    if video_path is not None:
        out["video_path"] = None
        if video_skip is None and "render_error" in results[0]:
            video_skip = f"rendering failed: {results[0]['render_error']}"
        if video_skip is None:
            from diffctl.envs.video import write_video

            try:
                out["video_path"] = str(write_video(video_path, results[0]["frames"], fps=video_fps))
            except Exception as err:
                video_skip = err
        if video_skip is not None:
            _skipped("video", video_path, video_skip)
    if plot_path is not None:
        title = f"{spec.name}: success {out['success_rate']:.2f}, return {mean_return:.1f}"
        try:
            from diffctl.envs.video import plot_maze_trajectories

            out["plot_path"] = str(
                plot_maze_trajectories(
                    plot_path, spec.name, [r["trajectory"] for r in results], [r["goal"] for r in results],
                    successes, title,
                )
            )  # fmt: skip
        except Exception as err:
            out["plot_path"] = None
            _skipped("plot", plot_path, err)
    return out
