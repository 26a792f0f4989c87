"""Inference latency statistics and the delay, in control ticks, that real-time chunking must cover."""

from __future__ import annotations

import collections
import math
import threading

import numpy as np


class LatencyTracker:
    """Thread-safe rolling window of latencies (seconds) with p50 / p99 / mean in milliseconds.

    ``delay_ticks(dt)`` converts a latency quantile into whole control periods: the number of actions that
    will already have executed when a chunk requested now arrives (the prefix real-time chunking inpaints).
    """

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError(f"LatencyTracker window must be >= 1, got {window}")
        self._values: collections.deque[float] = collections.deque(maxlen=window)
        self._lock = threading.Lock()
        self.count = 0

    def record(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {seconds}")
        with self._lock:
            self._values.append(float(seconds))
            self.count += 1

    def _array(self) -> np.ndarray:
        with self._lock:
            return np.asarray(self._values, dtype=np.float64)

    def quantile_ms(self, q: float) -> float:
        """The ``q`` quantile (0..1) in ms; NaN before the first record."""
        values = self._array()
        return float(np.quantile(values, q) * 1e3) if values.size else float("nan")

    def summary(self) -> dict[str, float]:
        values = self._array()
        if not values.size:
            nan = float("nan")
            return {"p50_ms": nan, "p99_ms": nan, "mean_ms": nan, "max_ms": nan, "count": 0}
        return {
            "p50_ms": float(np.quantile(values, 0.5) * 1e3),
            "p99_ms": float(np.quantile(values, 0.99) * 1e3),
            "mean_ms": float(values.mean() * 1e3),
            "max_ms": float(values.max() * 1e3),
            "count": int(self.count),
        }

    def delay_ticks(self, dt: float, quantile: float = 0.99, default: int = 0) -> int:
        """Control ticks (period ``dt`` s) that pass while an inference of the ``quantile`` latency runs."""
        if dt <= 0:
            raise ValueError(f"control period dt must be > 0, got {dt}")
        values = self._array()
        if not values.size:
            return default
        return math.ceil(float(np.quantile(values, quantile)) / dt)
