"""Timestamped action chunks and the schedule that plays them on a tick grid, dropping stale actions.

Action ``i`` of a chunk conditioned on the observation taken at tick ``k`` is meant for tick ``k + i``. When
the chunk arrives late (inference took ``d`` ticks) its first ``d`` actions are stale and never executed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TimedChunk:
    """Actions ``(N, Da)`` for ticks ``start_tick .. start_tick + N - 1``, with inference timestamps."""

    actions: np.ndarray
    start_tick: int
    chunk_id: int
    t_request: float
    t_ready: float

    def __post_init__(self) -> None:
        if self.actions.ndim != 2 or self.actions.shape[0] < 1:
            raise ValueError(f"chunk actions must have shape (N >= 1, Da), got {self.actions.shape}")
        if not np.isfinite(self.actions).all():
            raise ValueError(f"chunk {self.chunk_id} contains NaN or inf actions")

    @property
    def end_tick(self) -> int:
        """One past the last tick this chunk covers."""
        return self.start_tick + self.actions.shape[0]


class ActionSchedule:
    """The current plan: the newest chunk wins; actions for past ticks are dropped and counted."""

    def __init__(self) -> None:
        self.chunk: TimedChunk | None = None
        self.dropped = 0
        self.superseded = 0

    def push(self, chunk: TimedChunk, now_tick: int) -> int:
        """Adopt ``chunk`` (if newer than the current one); returns how many of its actions are stale."""
        if self.chunk is not None and chunk.start_tick < self.chunk.start_tick:
            self.dropped += chunk.actions.shape[0]
            return chunk.actions.shape[0]
        if self.chunk is not None:
            self.superseded += max(0, self.chunk.end_tick - max(now_tick, chunk.start_tick))
        stale = int(np.clip(now_tick - chunk.start_tick, 0, chunk.actions.shape[0]))
        self.dropped += stale
        self.chunk = chunk
        return stale

    def action_at(self, tick: int) -> tuple[np.ndarray, int] | None:
        """The planned action for ``tick`` and its chunk id, or None when the plan does not cover it."""
        c = self.chunk
        if c is None or not c.start_tick <= tick < c.end_tick:
            return None
        return c.actions[tick - c.start_tick], c.chunk_id

    def remaining(self, tick: int) -> int:
        """Planned actions left from ``tick`` on (inclusive)."""
        return 0 if self.chunk is None else max(0, self.chunk.end_tick - tick)

    def upcoming(self, tick: int, n: int) -> np.ndarray | None:
        """The next ``n`` planned actions from ``tick`` (None if the plan is shorter)."""
        c = self.chunk
        if c is None or n <= 0 or tick < c.start_tick or tick + n > c.end_tick:
            return None
        return c.actions[tick - c.start_tick : tick - c.start_tick + n]


def shape_action(
    action: np.ndarray,
    previous: np.ndarray | None,
    low: np.ndarray | None,
    high: np.ndarray | None,
    max_delta: np.ndarray | None,
) -> np.ndarray:
    """Clip to ``[low, high]`` and limit the per-tick change to ``max_delta`` (rate limit)."""
    out = np.asarray(action, dtype=np.float64)
    if previous is not None and max_delta is not None:
        out = np.clip(out, previous - max_delta, previous + max_delta)
    if low is not None or high is not None:
        out = np.clip(out, low, high)
    return out.astype(np.float32)
