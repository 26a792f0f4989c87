"""ControlLoop: holds the last action while inference overruns, never executes stale actions, stops on stalls.

The fake policy's inference is gated on the loop's own tick count (it returns only after the robot side has
been asked for the observation of tick ``k + delay``) and the loop runs on a virtual clock that advances only
when it sleeps, so no tick is ever skipped and behaviour is checked from recorded ticks and actions rather
than from wall-clock thresholds.
"""

import threading
import time

import numpy as np
import pytest

from diffctl.deploy import ControlLoop, LatencyTracker, LoopConfig
from diffctl.deploy.scheduling import ActionSchedule, TimedChunk, shape_action


class VirtualClock:
    """Monotonic time that advances only through ``sleep`` (the loop's wait for its next tick).

    Each sleep also yields the CPU for a real millisecond so the inference thread gets to run.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds
        time.sleep(0.001)


class GatedRobotPolicy:
    """Robot + policy pair: observation = tick; the action for tick t of a chunk is ``[t, chunk number]``."""

    n_obs_steps = 1

    def __init__(self, delay: int, horizon: int = 10, n_action_steps: int = 4) -> None:
        self.delay, self.horizon, self.n_action_steps = delay, horizon, n_action_steps
        self.tick = -1
        self.cond = threading.Condition()
        self.calls: list[tuple[int, np.ndarray | None]] = []
        self.applied: list[np.ndarray] = []

    def get_obs(self) -> np.ndarray:
        with self.cond:
            self.tick += 1
            self.cond.notify_all()
            return np.array([self.tick, 0.0], dtype=np.float32)

    def apply(self, action: np.ndarray) -> None:
        self.applied.append(np.array(action))

    def predict_chunk(self, hist: np.ndarray, prefix: np.ndarray | None = None) -> np.ndarray:
        k = int(hist[0, -1, 0])
        self.calls.append((k, None if prefix is None else np.array(prefix[0])))
        with self.cond:
            assert self.cond.wait_for(lambda: self.tick >= k + self.delay, timeout=10)
        ticks = k - (self.n_obs_steps - 1) + np.arange(self.horizon, dtype=np.float32)
        return np.stack([ticks, np.full(self.horizon, len(self.calls), np.float32)], -1)[None]


def test_holds_last_action_when_inference_overruns():
    delay = 6
    bot = GatedRobotPolicy(delay=delay, horizon=10, n_action_steps=4)
    cfg = LoopConfig(rate_hz=400.0, prime=False, safe_action=[-1.0, -1.0], watchdog_s=5.0)
    clock = VirtualClock()
    result = ControlLoop(bot, bot.get_obs, bot.apply, cfg, clock=clock, sleep=clock.sleep).run(ticks=200)
    assert result.stall is None
    assert result.missed_ticks == 0
    np.testing.assert_array_equal(result.ticks, np.arange(200))
    src = np.array(result.source)
    executed = src == "chunk"
    # every executed chunk action is the one planned for exactly this tick: nothing stale ever runs
    np.testing.assert_array_equal(result.actions[executed, 0], result.ticks[executed])
    # each chunk arrived at least `delay` ticks after its observation; its stale head was dropped
    arrived = result.chunks
    assert len(arrived) >= 3
    for c in arrived:
        assert c["arrival_tick"] - c["start_tick"] >= delay
        assert c["stale"] >= delay
    assert result.dropped >= delay * len(arrived)
    # before the first chunk: the safe action; afterwards every gap repeats the previous applied action
    first = int(np.argmax(executed))
    assert src[0] == "safe" and (result.actions[:first] == -1.0).all()
    held = [i for i in range(first, len(src)) if src[i] == "hold"]
    assert held, "inference slower than the chunk should force holds"
    for i in held:
        np.testing.assert_array_equal(result.actions[i], result.actions[i - 1])
    np.testing.assert_array_equal(np.stack(bot.applied), result.actions)
    assert result.latency["count"] == len(arrived)


def test_rtc_prefix_is_executed_then_planned_actions():
    bot = GatedRobotPolicy(delay=0, horizon=12, n_action_steps=6)
    bot.n_obs_steps = 3
    cfg = LoopConfig(rate_hz=400.0, delay_ticks=2, rtc=True, watchdog_s=5.0)
    clock = VirtualClock()
    result = ControlLoop(bot, bot.get_obs, bot.apply, cfg, clock=clock, sleep=clock.sleep).run(ticks=60)
    assert result.missed_ticks == 0
    applied = {int(t): a for t, a in zip(result.ticks, result.actions, strict=True)}
    with_prefix = [(k, p) for k, p in bot.calls if p is not None]
    assert with_prefix
    for k, prefix in with_prefix:
        assert prefix.shape == (2 + 2, 2)
        for j, t in enumerate((k - 2, k - 1)):
            if t in applied:
                np.testing.assert_array_equal(prefix[j], applied[t])
        np.testing.assert_array_equal(prefix[2:, 0], [k, k + 1])


def test_watchdog_stops_on_stalled_inference():
    release = threading.Event()

    class Stuck:
        n_obs_steps, n_action_steps = 1, 2

        def predict_chunk(self, hist, prefix=None):
            if hist[0, -1, 0] > 0:
                release.wait(10)
            return np.zeros((1, 2, 1), np.float32)

    counter = iter(range(10**6))
    stalls: list[str] = []
    cfg = LoopConfig(rate_hz=200.0, watchdog_s=0.2, safe_action=[0.5], max_delta=1.0)
    loop = ControlLoop(Stuck(), lambda: [float(next(counter))], lambda a: None, cfg, on_stall=stalls.append)
    try:
        result = loop.run(ticks=2000)
    finally:
        release.set()
    assert result.stall is not None and "inference stalled" in result.stall
    assert stalls == [result.stall]
    assert len(result.ticks) < 2000
    assert result.source[-1] == "stop" and result.stop_action == "safe" and result.actions[-1, 0] == 0.5


def test_a_stop_without_safe_action_applies_zero_not_the_last_command():
    class Failing:
        n_obs_steps, n_action_steps, action_dim = 1, 4, 2

        def predict_chunk(self, hist, prefix=None):
            if hist[0, -1, 0] > 2:
                raise RuntimeError("policy crashed")
            return np.tile(np.array([1.0, 0.17], np.float32), (1, 4, 1))

    counter = iter(range(10**6))
    applied: list[np.ndarray] = []
    loop = ControlLoop(Failing(), lambda: [float(next(counter))], applied.append, LoopConfig(rate_hz=200.0))
    result = loop.run(ticks=500)
    assert result.stall is not None and "inference error: RuntimeError: policy crashed" in result.stall
    assert result.stop_action == "zero" and result.source[-1] == "stop"
    np.testing.assert_array_equal(applied[-1], [0.0, 0.0])  # not the [1.0, 0.17] it was executing
    assert result.summary()["stop_action"] == "zero"
    with pytest.raises(ValueError, match="action_kind='position' needs safe_action"):
        LoopConfig(action_kind="position")
    with pytest.raises(ValueError, match="action_kind must be one of"):
        LoopConfig(action_kind="torque")


def test_shape_action_clips_and_rate_limits():
    prev = np.array([0.0, 0.0])
    out = shape_action(
        np.array([2.0, -0.05]), prev, np.array([-1, -1]), np.array([1, 1]), np.array([0.1, 0.1])
    )
    np.testing.assert_allclose(out, [0.1, -0.05], rtol=1e-6)
    np.testing.assert_allclose(shape_action(np.array([3.0]), None, -1.0, 1.0, None), [1.0])


def test_schedule_drops_stale_and_older_chunks():
    sched = ActionSchedule()
    a = np.arange(5, dtype=np.float32).reshape(5, 1)
    assert sched.push(TimedChunk(a, start_tick=10, chunk_id=1, t_request=0, t_ready=0), now_tick=12) == 2
    assert sched.action_at(12)[0][0] == 2 and sched.action_at(15) is None
    assert sched.push(TimedChunk(a, start_tick=8, chunk_id=0, t_request=0, t_ready=0), now_tick=13) == 5
    assert sched.chunk.chunk_id == 1 and sched.dropped == 7
    with pytest.raises(ValueError, match="NaN"):
        TimedChunk(np.full((2, 1), np.nan), 0, 3, 0, 0)


def test_latency_tracker_delay_ticks():
    lat = LatencyTracker()
    assert lat.delay_ticks(0.01, default=3) == 3
    for ms in (5, 5, 5, 25):
        lat.record(ms / 1e3)
    assert lat.delay_ticks(0.01, quantile=0.5) == 1
    assert lat.delay_ticks(0.01, quantile=1.0) == 3
    s = lat.summary()
    assert s["p50_ms"] == pytest.approx(5.0) and s["mean_ms"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="dt"):
        lat.delay_ticks(0.0)


def test_config_errors():
    with pytest.raises(ValueError, match="hold"):
        LoopConfig(hold="zero")
    with pytest.raises(ValueError, match="safe_action"):
        LoopConfig(hold="safe")
    with pytest.raises(ValueError, match="rate_hz"):
        LoopConfig(rate_hz=0)
    with pytest.raises(ValueError, match="predict_chunk nor act"):
        ControlLoop(object(), lambda: [0.0], lambda a: None)


def test_late_first_tick_holds_the_primed_chunk(monkeypatch):
    """Thread start-up that makes the first ticks run past the primed chunk: the loop holds that chunk's
    last action (no safe action configured) until the next chunk arrives, instead of failing."""
    import diffctl.deploy.loop as loop_module

    clock = VirtualClock()
    cfg = LoopConfig(rate_hz=100.0, prime=True, watchdog_s=5.0)
    jump_ticks = 30

    class SlowStartThread(threading.Thread):
        def start(self) -> None:
            if self.name == "diffctl-inference":
                with clock.lock:
                    clock.now += (jump_ticks + 0.5) * cfg.dt
            super().start()

    class PrimedBot(GatedRobotPolicy):
        def predict_chunk(self, hist: np.ndarray, prefix: np.ndarray | None = None) -> np.ndarray:
            if self.calls:
                return super().predict_chunk(hist, prefix)
            self.calls.append((0, None))  # priming runs on the loop's thread: not gated
            ticks = np.arange(self.horizon, dtype=np.float32)
            return np.stack([ticks, np.ones(self.horizon, np.float32)], -1)[None]

    monkeypatch.setattr(loop_module.threading, "Thread", SlowStartThread)
    bot = PrimedBot(delay=3, horizon=10, n_action_steps=4)
    result = ControlLoop(bot, bot.get_obs, bot.apply, cfg, clock=clock, sleep=clock.sleep).run(ticks=60)
    assert result.stall is None
    assert result.missed_ticks == jump_ticks
    assert result.ticks[0] == jump_ticks
    primed_last = np.array([9.0, 1.0], np.float32)  # the primed chunk (call 1) covers ticks 0..9
    assert result.source[0] == "hold"
    np.testing.assert_array_equal(result.actions[0], primed_last)
    held = [i for i, s in enumerate(result.source) if s == "hold"]
    assert held == list(range(len(held))) and 1 <= len(held) <= 4
    assert all(s == "chunk" for s in result.source[len(held) :])


def test_a_policy_that_cannot_keep_up_exceeds_the_hold_budget():
    class Slow:
        n_obs_steps, n_action_steps, action_dim = 1, 2, 1

        def predict_chunk(self, hist, prefix=None):
            time.sleep(0.1)  # twenty 5 ms ticks per chunk of two actions
            return np.ones((1, 2, 1), np.float32)

    flagged = ControlLoop(Slow(), lambda: [0.0], lambda a: None, LoopConfig(rate_hz=200.0)).run(ticks=60)
    assert flagged.hold_budget_exceeded and flagged.longest_hold_run > 4 and flagged.stall is None
    assert flagged.summary()["hold_budget_exceeded"] is True
    stopped = ControlLoop(
        Slow(), lambda: [0.0], lambda a: None, LoopConfig(rate_hz=200.0, stop_on_hold_budget=True)
    ).run(ticks=200)
    assert stopped.stall is not None and "consecutive ticks (hold budget 4)" in stopped.stall
    assert stopped.source[-1] == "stop" and stopped.stop_action == "zero" and len(stopped.ticks) < 200
    with pytest.raises(ValueError, match="hold_budget must be >= 1"):
        LoopConfig(hold_budget=0)


def test_the_watchdog_applies_the_stop_action_while_get_obs_is_blocked():
    """get_obs blocks 1.5 s: the robot gets the stop action about watchdog_s in, not when get_obs returns."""

    class Constant:
        n_obs_steps, n_action_steps, action_dim = 1, 4, 2

        def predict_chunk(self, hist, prefix=None):
            return np.tile(np.array([1.0, 0.17], np.float32), (1, 4, 1))

    calls = iter(range(10**6))
    blocked: dict[str, float] = {}
    applied: list[tuple[float, np.ndarray]] = []

    def get_obs():
        if next(calls) == 10:
            blocked["start"] = time.monotonic()
            time.sleep(1.5)
            blocked["end"] = time.monotonic()
        return [0.0]

    config = LoopConfig(rate_hz=50.0, watchdog_s=0.2)
    loop = ControlLoop(Constant(), get_obs, lambda a: applied.append((time.monotonic(), a)), config)
    result = loop.run(ticks=200)
    assert result.stall is not None and "control loop stalled" in result.stall
    t_stop, stop = applied[-1]
    np.testing.assert_array_equal(stop, [0.0, 0.0])
    assert blocked["start"] + 0.2 < t_stop < blocked["start"] + 0.8 < blocked["end"]  # during the block
    assert [a for t, a in applied if t > t_stop] == []  # nothing applied after the stop
    assert result.stop_action == "zero" and result.source[-1] == "stop" and result.stop_time_s is not None


def test_chunks_are_requested_once_per_replan_interval_whatever_the_delay():
    """3-tick inference, 8 actions per chunk: a request per 8 ticks (the delay counted twice: 1 per 5)."""

    class Slow:
        n_obs_steps, n_action_steps, action_dim = 2, 8, 2

        def predict_chunk(self, hist, prefix=None):
            time.sleep(0.012)  # 2.4 periods at 200 Hz: a measured delay of 3 ticks
            return np.zeros((1, 16, 2), np.float32)

    for delay_ticks in (None, 3):
        config = LoopConfig(rate_hz=200.0, delay_ticks=delay_ticks)
        result = ControlLoop(Slow(), lambda: [0.0], lambda a: None, config).run(ticks=160)
        assert len(result.chunks) <= 160 // 8 + 1, (delay_ticks, len(result.chunks))
        assert result.longest_hold_run == 0
        starts = [c["start_tick"] for c in result.chunks]
        assert min(np.diff(starts)) >= 8 - 1  # a late tick may shift one request by a tick
