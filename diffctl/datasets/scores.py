"""D4RL normalized scores: ``100 * (R - random) / (expert - random)`` with D4RL's reference returns."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "maze2d-umaze": (23.85, 161.86),
    "maze2d-medium": (13.13, 277.39),
    "maze2d-large": (6.7, 273.99),
}
_SUFFIX = re.compile(r"-v\d+$")


def reference_task(name: str) -> str:
    """The task whose reference returns apply to a task or dataset name (``hopper-medium-v2`` ->
    ``hopper``)."""
    base = _SUFFIX.sub("", name.strip().lower())
    if base in REFERENCE_SCORES:
        return base
    for task in sorted(REFERENCE_SCORES, key=len, reverse=True):
        if base.startswith(task + "-"):
            return task
    raise ValueError(f"no D4RL reference score for {name!r}; known tasks: {sorted(REFERENCE_SCORES)}")


def normalized_score(name: str, returns: Any) -> Any:
    """Normalized score of an undiscounted episode return (float) or of an array of returns (array)."""
    low, high = REFERENCE_SCORES[reference_task(name)]
    values = np.asarray(returns, dtype=np.float64)
    scores = 100.0 * (values - low) / (high - low)
    return float(scores) if scores.ndim == 0 else scores
