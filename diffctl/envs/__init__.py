"""Simulation: task registry, gymnasium wrappers, the scripted maze expert and ``evaluate``.

Importing this package loads no simulator; ``make_env`` and the submodules import gymnasium / MuJoCo on use.
"""

from __future__ import annotations

import importlib
from typing import Any

from diffctl.envs.registry import TASKS, TaskSpec, get_task, make_env, normalized_score, task_names

_LAZY = {
    "evaluate": "diffctl.envs.evaluate",
    "MazeExpertAgent": "diffctl.envs.experts",
    "WaypointController": "diffctl.envs.experts",
    "MazeLayout": "diffctl.envs.maze",
    "PointMassSim": "diffctl.envs.maze",
    "maze_layout": "diffctl.envs.maze",
}

__all__ = ["TASKS", "TaskSpec", "get_task", "make_env", "normalized_score", "task_names", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffctl.envs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
