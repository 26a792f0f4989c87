"""``ControlLoop``: a fixed-rate controller fed by asynchronous chunk inference.

The loop ticks on a monotonic clock at ``rate_hz``. Each tick it reads an observation, adopts any chunk the
inference thread finished, executes the action planned for this tick (stale ones are dropped; with nothing
planned it holds the last action or a safe action), shapes it (clip + rate limit) and applies it. A new chunk
is requested early enough that, given the measured inference delay, it arrives before the plan runs out. A
watchdog thread flags a loop or an inference that stalls; when the loop itself is stuck (a ``get_obs`` or a
tick that does not return) it applies the stop action from its own thread, without waiting for the loop. The
robot side is two callables, ``get_obs()`` and
``apply(action)``, so the same loop drives a simulator, a network client or hardware.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffctl.deploy.latency import LatencyTracker
from diffctl.deploy.scheduling import ActionSchedule, TimedChunk, shape_action

HOLD_MODES = ("last", "safe")
ACTION_KINDS = ("velocity", "position")


@dataclass
class LoopConfig:
    """Control-loop settings.

    ``replan_every``: ticks between chunk starts (default: the policy's ``n_action_steps``).
    ``delay_ticks``: inference delay assumed when requesting chunks and for real-time chunking
    (None: the p99 of the measured latency). ``hold``: with no planned action, repeat the last action
    (``"last"``) or send ``safe_action`` (``"safe"``). ``inference_budget_s``: chunks slower than this are
    counted as over budget (default: ``replan_every`` periods). ``watchdog_s``: a tick or an inference taking
    longer than this is a stall (an inference error is one too); with ``stop_on_stall`` the loop applies its
    stop action and stops. The stop action is ``safe_action``, or zero for ``action_kind="velocity"``
    (velocity-like commands: zero halts); ``action_kind="position"`` requires ``safe_action``, since repeating
    or zeroing a position target is not safe by itself. It is clipped to the action limits, not rate limited.
    ``wait_s``: when nothing is planned for the current tick and a request is in flight, wait this long
    for it within the tick before holding (default: half a period).
    ``hold_budget``: consecutive ticks without a planned action, after the first chunk, that the loop
    tolerates (default: two chunks, ``2 * replan_every``); a longer run sets
    ``LoopResult.hold_budget_exceeded`` and, with ``stop_on_hold_budget``, stops the loop as a stall does
    (the policy cannot keep up).
    ``rtc``: real-time chunking, i.e. inpaint the actions that will execute during inference into the next
    chunk (policies whose ``predict_chunk`` takes ``prefix``). ``prime``: compute the first chunk before the
    clock starts.
    """

    rate_hz: float = 10.0
    replan_every: int | None = None
    delay_ticks: int | None = None
    action_low: Sequence[float] | float | None = None
    action_high: Sequence[float] | float | None = None
    max_delta: Sequence[float] | float | None = None
    safe_action: Sequence[float] | None = None
    action_kind: str = "velocity"
    hold: str = "last"
    inference_budget_s: float | None = None
    watchdog_s: float = 1.0
    stop_on_stall: bool = True
    hold_budget: int | None = None
    stop_on_hold_budget: bool = False
    wait_s: float | None = None
    rtc: bool = False
    prime: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ValueError(f"rate_hz must be a positive number, got {self.rate_hz}")
        if self.hold not in HOLD_MODES:
            raise ValueError(f"hold must be one of {HOLD_MODES}, got {self.hold!r}")
        if self.hold == "safe" and self.safe_action is None:
            raise ValueError("hold='safe' needs safe_action")
        if self.action_kind not in ACTION_KINDS:
            raise ValueError(f"action_kind must be one of {ACTION_KINDS}, got {self.action_kind!r}")
        if self.action_kind == "position" and self.safe_action is None:
            raise ValueError(
                "action_kind='position' needs safe_action: the command the loop applies when it stops"
            )
        if self.replan_every is not None and self.replan_every < 1:
            raise ValueError(f"replan_every must be >= 1, got {self.replan_every}")
        if self.delay_ticks is not None and self.delay_ticks < 0:
            raise ValueError(f"delay_ticks must be >= 0, got {self.delay_ticks}")
        if self.watchdog_s <= 0:
            raise ValueError(f"watchdog_s must be > 0, got {self.watchdog_s}")
        if self.hold_budget is not None and self.hold_budget < 1:
            raise ValueError(f"hold_budget must be >= 1 tick, got {self.hold_budget}")

    @property
    def dt(self) -> float:
        return 1.0 / self.rate_hz


class ChunkInference:
    """Adapts a policy to ``infer(history (To, D), prefix (P, Da) | None) -> actions (N, Da)``.

    With ``predict_chunk`` the actions run from chunk index ``To - 1`` (the current observation) to the end;
    an ``act``-only agent yields one action per call.
    """

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.chunked = callable(getattr(policy, "predict_chunk", None))
        if not self.chunked and not callable(getattr(policy, "act", None)):
            raise ValueError(f"{type(policy).__name__} has neither predict_chunk nor act")
        self.n_obs_steps = int(getattr(policy, "n_obs_steps", 1)) if self.chunked else 1
        self.n_action_steps = int(getattr(policy, "n_action_steps", 1)) if self.chunked else 1

    def __call__(self, history: np.ndarray, prefix: np.ndarray | None = None) -> np.ndarray:
        if not self.chunked:
            return np.asarray(self.policy.act(history[-1]), dtype=np.float32).reshape(1, -1)
        kwargs = {} if prefix is None else {"prefix": prefix[None]}
        chunk = self.policy.predict_chunk(history[None], **kwargs)
        chunk = chunk.detach().cpu().numpy() if hasattr(chunk, "detach") else np.asarray(chunk)
        return chunk[0, self.n_obs_steps - 1 :].astype(np.float32)


@dataclass
class LoopResult:
    """What happened, tick by tick (``source``: ``chunk``, ``hold``, ``safe`` or ``stop``), chunk by chunk."""

    ticks: np.ndarray
    times: np.ndarray
    actions: np.ndarray
    source: list[str]
    chunk_ids: np.ndarray
    chunks: list[dict[str, Any]]
    dropped: int
    missed_ticks: int
    over_budget: int
    stall: str | None
    latency: dict[str, float]
    tick_jitter_ms: dict[str, float] = field(default_factory=dict)
    stop_action: str | None = None
    """What the loop applied when a stall stopped it: ``safe`` (``safe_action``) or ``zero``; else None."""
    stop_time_s: float | None = None
    """When (seconds after the clock started) the stop action was applied; the watchdog applies it while a
    blocked ``get_obs`` has not returned, so this can precede the last recorded tick's end."""
    longest_hold_run: int = 0
    """The longest run of consecutive ticks without a planned action after the first chunk."""
    hold_budget_exceeded: bool = False
    """Whether that run exceeded ``LoopConfig.hold_budget`` (the policy did not keep up)."""

    @property
    def held(self) -> int:
        return sum(s != "chunk" for s in self.source)

    def summary(self) -> dict[str, Any]:
        return {
            "ticks": len(self.ticks), "held": self.held, "dropped": self.dropped,
            "missed_ticks": self.missed_ticks, "over_budget": self.over_budget, "chunks": len(self.chunks),
            "stall": self.stall, "stop_action": self.stop_action, "stop_time_s": self.stop_time_s,
            "longest_hold_run": self.longest_hold_run,
            "hold_budget_exceeded": self.hold_budget_exceeded, "latency": self.latency,
            "tick_jitter_ms": self.tick_jitter_ms,
        }  # fmt: skip


@dataclass
class _Request:
    history: np.ndarray
    prefix: np.ndarray | None
    tick: int
    chunk_id: int
    t_request: float


class ControlLoop:
    """Run ``policy`` against ``get_obs`` / ``apply`` at a fixed rate; see the module docstring."""

    def __init__(
        self,
        policy: Any,
        get_obs: Callable[[], Any],
        apply: Callable[[np.ndarray], Any],
        config: LoopConfig | None = None,
        *,
        on_stall: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.cfg = config or LoopConfig()
        self.infer = policy if isinstance(policy, ChunkInference) else ChunkInference(policy)
        self.get_obs, self.apply, self.on_stall = get_obs, apply, on_stall
        self.clock, self.sleep = clock, sleep
        self.latency = LatencyTracker()
        self.replan_every = self.cfg.replan_every or self.infer.n_action_steps

        def vec(v: Any) -> np.ndarray | None:
            return None if v is None else np.asarray(v, dtype=np.float64)

        self._low, self._high = vec(self.cfg.action_low), vec(self.cfg.action_high)
        self._max_delta, self._safe = vec(self.cfg.max_delta), vec(self.cfg.safe_action)
        if self._max_delta is not None and np.any(self._max_delta <= 0):
            raise ValueError(f"max_delta must be > 0, got {self.cfg.max_delta}")

    # ----- inference thread ----------------------------------------------------------------------------
    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                req = self._requests.get(timeout=0.05)
            except queue.Empty:
                continue
            self._busy_since = self.clock()
            try:
                actions = self.infer(req.history, req.prefix)
                t_ready = self.clock()
                chunk = TimedChunk(
                    np.asarray(actions, np.float32), req.tick, req.chunk_id, req.t_request, t_ready
                )
                self.latency.record(t_ready - req.t_request)
                self._results.put(chunk)
            except Exception as err:
                self._flag(f"inference error: {type(err).__name__}: {err}")
            finally:
                self._busy_since = None

    def _watchdog(self) -> None:
        period = min(self.cfg.watchdog_s / 4, 0.05)
        while not self._stop.wait(period):
            now = self.clock()
            busy = self._busy_since
            if busy is not None and now - busy > self.cfg.watchdog_s:
                self._flag(f"inference stalled for more than {self.cfg.watchdog_s:.3f} s")
            if now - self._last_beat > self.cfg.watchdog_s + self.cfg.dt:
                self._flag(f"control loop stalled for more than {self.cfg.watchdog_s:.3f} s")
                if self.cfg.stop_on_stall:
                    self._halt()  # the loop thread is stuck: it cannot apply the stop action itself

    def _halt(self) -> None:
        """Apply the stop action once, from whichever thread gets here first; later commands are dropped."""
        with self._apply_lock:
            if self._halted is not None:
                return
            action, kind = self._stop_action(self._last_action)
            self.apply(action)
            self._halted = (action, kind, self.clock() - self._t0)

    def _command(self, action: np.ndarray) -> bool:
        """Apply ``action`` unless the loop was halted; False when it was."""
        with self._apply_lock:
            if self._halted is not None:
                return False
            self.apply(action)
            self._last_action = action
            return True

    def _flag(self, reason: str) -> None:
        with self._flag_lock:
            if self._stall is not None:
                return
            self._stall = reason
        if self.on_stall is not None:
            self.on_stall(reason)

    # ----- the loop ------------------------------------------------------------------------------------
    def _delay(self) -> int:
        if self.cfg.delay_ticks is not None:
            return self.cfg.delay_ticks
        return self.latency.delay_ticks(self.cfg.dt, 0.99, default=0)

    def _due(self, tick: int, delay: int) -> bool:
        """Request every ``replan_every`` ticks, or earlier when the plan would run out during inference.

        A chunk's ``start_tick`` is the tick of its request: the actions for the ``delay`` ticks its inference
        takes are stale on arrival. Chunks requested ``replan_every`` apart are therefore adopted
        ``replan_every`` apart whatever the delay; subtracting the delay here as well would count it twice
        and replan every ``replan_every - delay`` ticks.
        """
        chunk = self.schedule.chunk
        if chunk is None:
            return True
        return tick >= chunk.start_tick + self.replan_every or self.schedule.remaining(tick) <= delay + 1

    def _prefix(self, tick: int, delay: int, executed: collections.deque) -> np.ndarray | None:
        """Real-time chunking prefix: the ``To - 1`` executed actions and the ``delay`` still planned."""
        if not (self.cfg.rtc and self.infer.chunked):
            return None
        past = self.infer.n_obs_steps - 1
        if len(executed) < past:
            return None
        upcoming = self.schedule.upcoming(tick, delay)
        if delay and upcoming is None:
            return None
        parts = list(executed)[len(executed) - past :] if past else []
        parts = [np.asarray(p, np.float32) for p in parts]
        if delay:
            parts.extend(upcoming)
        return np.stack(parts) if parts else None

    def _drain(self, deadline: float | None) -> list[TimedChunk]:
        """Finished chunks; with a deadline, block until one arrives or the deadline passes."""
        out = []
        if deadline is not None:
            try:
                out.append(self._results.get(timeout=max(deadline - self.clock(), 0.0)))
            except queue.Empty:
                return out
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def _adopt(self, chunk: TimedChunk, tick: int, budget: float, log: list[dict[str, Any]]) -> bool:
        """Put ``chunk`` on the schedule, log it; True when its inference was over budget."""
        lat = chunk.t_ready - chunk.t_request
        stale = self.schedule.push(chunk, tick)
        log.append({"chunk_id": chunk.chunk_id, "start_tick": chunk.start_tick, "arrival_tick": tick,
                    "latency_s": lat, "stale": stale, "n": chunk.actions.shape[0]})  # fmt: skip
        return lat > budget

    def _fallback(self, last: np.ndarray | None) -> tuple[np.ndarray | None, str]:
        if self.cfg.hold == "last" and last is not None:
            return last, "hold"
        if self._safe is not None:
            return self._safe.astype(np.float32), "safe"
        return last, "hold"

    def _stop_action(self, last: np.ndarray | None) -> tuple[np.ndarray, str]:
        """The command applied when a stall stops the loop (see ``LoopConfig``) and which one it is."""
        if self._safe is not None:
            action, kind = self._safe, "safe"
        else:
            width = last.shape[-1] if last is not None else int(getattr(self.infer.policy, "action_dim", 1))
            action, kind = np.zeros(width), "zero"
        return shape_action(action, None, self._low, self._high, None), kind

    def run(self, ticks: int | None = None, duration_s: float | None = None) -> LoopResult:
        """Run until ``ticks`` ticks (or ``duration_s`` seconds) have passed, or a stall stops the loop."""
        if ticks is None and duration_s is None:
            raise ValueError("ControlLoop.run needs ticks or duration_s")
        if duration_s is not None:
            ticks = min(ticks or math.inf, math.ceil(duration_s * self.cfg.rate_hz))
        dt, to = self.cfg.dt, self.infer.n_obs_steps
        self.schedule = ActionSchedule()
        self._requests: queue.Queue[_Request] = queue.Queue(maxsize=1)
        self._results: queue.Queue[TimedChunk] = queue.Queue()
        self._stop, self._flag_lock = threading.Event(), threading.Lock()
        self._stall: str | None = None
        self._busy_since: float | None = None
        self._apply_lock = threading.Lock()
        self._halted: tuple[np.ndarray, str, float] | None = None
        self._last_action: np.ndarray | None = None
        history: collections.deque[np.ndarray] = collections.deque(maxlen=to)
        executed: collections.deque[np.ndarray] = collections.deque(maxlen=max(to - 1, 1))
        rec_tick, rec_t, rec_a, rec_src, rec_cid, chunks = [], [], [], [], [], []

        def record(tick: int, t: float, action: np.ndarray, source: str, cid: int) -> None:
            for log, value in zip(
                (rec_tick, rec_t, rec_a, rec_src, rec_cid), (tick, t, action, source, cid), strict=True
            ):
                log.append(value)

        missed = over_budget = 0
        budget = self.cfg.inference_budget_s or self.replan_every * dt
        wait_s = 0.5 * dt if self.cfg.wait_s is None else self.cfg.wait_s
        next_id, pending, last = 0, False, None
        hold_budget = self.cfg.hold_budget or 2 * self.replan_every
        hold_run = longest_hold = 0
        had_chunk = False
        primed: np.ndarray | None = None  # held if the first ticks run late, past the primed chunk

        obs = np.asarray(self.get_obs(), dtype=np.float32)
        history.extend([obs] * to)
        if self.cfg.prime:
            t = self.clock()
            first = self.infer(np.stack(history), None)
            primed = np.asarray(first, np.float32)[-1]
            self._last_action = primed
            self.latency.record(self.clock() - t)
            self.schedule.push(TimedChunk(np.asarray(first, np.float32), 0, 0, t, self.clock()), 0)
            chunks.append({"chunk_id": 0, "start_tick": 0, "arrival_tick": 0, "latency_s": self.clock() - t,
                           "stale": 0, "n": len(first)})  # fmt: skip
            next_id = 1
        worker = threading.Thread(target=self._worker, name="diffctl-inference", daemon=True)
        dog = threading.Thread(target=self._watchdog, name="diffctl-watchdog", daemon=True)
        t0 = self._t0 = self.clock()
        self._last_beat = t0
        worker.start()
        dog.start()
        tick, first = 0, True
        try:
            while tick < ticks:
                target = t0 + tick * dt
                now = self.clock()
                if now < target:
                    self.sleep(target - now)
                elif now - target >= dt:
                    late = int((now - target) // dt)
                    missed += late
                    tick += late
                    if tick >= ticks:
                        break
                t_tick = self.clock()
                self._last_beat = t_tick
                if first:
                    first = False
                else:
                    history.append(np.asarray(self.get_obs(), dtype=np.float32))
                for chunk in self._drain(None):
                    pending = False
                    over_budget += self._adopt(chunk, tick, budget, chunks)
                if self._stall is not None and self.cfg.stop_on_stall:
                    self._halt()
                    record(tick, t_tick - t0, self._halted[0], "stop", -1)
                    break
                delay = self._delay()
                if not pending and self._due(tick, delay):
                    prefix = self._prefix(tick, delay, executed)
                    req = _Request(np.stack(history), prefix, tick, next_id, self.clock())
                    try:
                        self._requests.put_nowait(req)
                        pending, next_id = True, next_id + 1
                    except queue.Full:
                        pass
                if pending and self.schedule.action_at(tick) is None:
                    for chunk in self._drain(t_tick + wait_s):
                        pending = False
                        over_budget += self._adopt(chunk, tick, budget, chunks)
                planned = self.schedule.action_at(tick)
                if planned is not None:
                    action, source, cid = planned[0], "chunk", planned[1]
                    had_chunk, hold_run = True, 0
                else:
                    action, source = self._fallback(last if last is not None else primed)
                    cid = -1
                    if action is None:
                        raise ValueError("no action available: set LoopConfig.safe_action or prime=True")
                    hold_run += had_chunk
                    longest_hold = max(longest_hold, hold_run)
                    if hold_run > hold_budget and self.cfg.stop_on_hold_budget:
                        self._flag(f"held {hold_run} consecutive ticks (hold budget {hold_budget})")
                action = shape_action(action, last, self._low, self._high, self._max_delta)
                if not self._command(action):  # the watchdog halted the loop during this tick
                    record(tick, t_tick - t0, self._halted[0], "stop", -1)
                    break
                last = action
                executed.append(action)
                record(tick, t_tick - t0, action, source, cid)
                tick += 1
        finally:
            self._stop.set()
            worker.join(timeout=0.1)
            dog.join(timeout=1.0)
        times = np.asarray(rec_t)
        jitter = (times - np.asarray(rec_tick) * dt) * 1e3 if len(times) else np.zeros(0)
        return LoopResult(
            ticks=np.asarray(rec_tick, dtype=np.int64),
            times=times,
            actions=np.asarray(rec_a, dtype=np.float32),
            source=rec_src,
            chunk_ids=np.asarray(rec_cid, dtype=np.int64),
            chunks=chunks,
            dropped=self.schedule.dropped,
            missed_ticks=missed,
            over_budget=int(over_budget),
            stall=self._stall,
            stop_action=None if self._halted is None else self._halted[1],
            stop_time_s=None if self._halted is None else self._halted[2],
            longest_hold_run=longest_hold,
            hold_budget_exceeded=longest_hold > hold_budget,
            latency=self.latency.summary(),
            tick_jitter_ms={"p50": float(np.quantile(jitter, 0.5)), "p99": float(np.quantile(jitter, 0.99))}
            if len(jitter)
            else {},
        )
