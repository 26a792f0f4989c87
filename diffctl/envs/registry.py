"""Task registry: ``make_env`` building a task's gymnasium environment, plus the task facts of
``diffctl.envs.tasks`` (``TaskSpec``, ``TASKS``, ``get_task``, ``normalized_score``, ...) re-exported here.

The registry itself imports no simulator; ``make_env`` imports ``diffctl.envs.wrappers`` (gymnasium /
gymnasium-robotics / gym-pusht) on first use so ``import diffctl.envs`` stays light.
"""

from __future__ import annotations

from typing import Any

from diffctl.envs.tasks import (
    DATASET_SUFFIXES,
    TASKS,
    TaskSpec,
    base_task_name,
    get_task,
    normalized_score,
    register_robotics_envs,
    require,
    task_names,
)

__all__ = [
    "DATASET_SUFFIXES",
    "TASKS",
    "TaskSpec",
    "base_task_name",
    "get_task",
    "make_env",
    "normalized_score",
    "register_robotics_envs",
    "task_names",
]


def make_env(name: str, seed: int | None = None, render_mode: str | None = None, **kwargs: Any) -> Any:
    """A gymnasium env for ``name`` with a flat float32 Box observation (image tasks: a dict of the
    state vector and a uint8 camera frame) and a Box action in [-1, 1].

    Maze tasks never terminate and never switch goals inside an episode (D4RL evaluation); they are
    truncated at the D4RL episode limit. ``seed`` seeds the first ``reset``.
    """
    spec = get_task(name)
    require(spec)
    from diffctl.envs import wrappers  # gymnasium and the simulators load here, on first use

    if spec.is_maze:
        env = wrappers.make_maze_env(spec, render_mode=render_mode, **kwargs)
    elif spec.kind == "fetch":
        from diffctl.envs.fetch import make_fetch_env

        env = make_fetch_env(spec, render_mode=render_mode, **kwargs)
    elif spec.kind == "locomotion":
        env = wrappers.make_locomotion_env(spec, render_mode=render_mode, **kwargs)
    else:
        env = wrappers.make_pusht_env(spec, render_mode=render_mode, **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
