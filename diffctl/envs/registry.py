"""Task registry: one ``TaskSpec`` per task name and ``make_env`` building its gymnasium environment.

The registry itself imports no simulator; ``make_env`` imports gymnasium / gymnasium-robotics / gym-pusht on
first use so ``import diffctl.envs`` stays light.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any

DATASET_SUFFIXES = ("-medium-replay", "-medium-expert", "-medium", "-expert", "-random")


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its simulator id, observation layout, episode limit and D4RL reference returns.

    ``obs_dim`` is the state part of the flat observation and ``goal_dim`` the goal appended after it
    (maze observations are ``[x, y, vx, vy, goal_x, goal_y]``: obs_dim 4, goal_dim 2).
    """

    name: str
    kind: str
    gym_id: str
    obs_dim: int
    action_dim: int
    max_episode_steps: int
    goal_dim: int = 0
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    success_threshold: float | None = None
    maze_map: str | None = None
    eval_goal_cell: tuple[int, int] | None = None
    dataset_steps: int | None = None
    requires: tuple[str, ...] = field(default_factory=tuple)

    @property
    def flat_obs_dim(self) -> int:
        return self.obs_dim + self.goal_dim

    @property
    def is_maze(self) -> bool:
        return self.kind == "maze"


_MAZE_REQUIRES = ("gymnasium", "gymnasium_robotics", "mujoco")
_MUJOCO_REQUIRES = ("gymnasium", "mujoco")

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "maze2d-umaze", "maze", "PointMaze_UMaze-v3", 4, 2, 300, goal_dim=2,
            ref_min_score=23.85, ref_max_score=161.86, success_threshold=0.5,
            maze_map="U_MAZE", eval_goal_cell=(1, 1), dataset_steps=1_000_000, requires=_MAZE_REQUIRES,
        ),
        TaskSpec(
            "maze2d-medium", "maze", "PointMaze_Medium-v3", 4, 2, 600, goal_dim=2,
            ref_min_score=13.13, ref_max_score=277.39, success_threshold=0.5,
            maze_map="MEDIUM_MAZE", eval_goal_cell=(6, 6), dataset_steps=2_000_000, requires=_MAZE_REQUIRES,
        ),
        TaskSpec(
            "maze2d-large", "maze", "PointMaze_Large-v3", 4, 2, 800, goal_dim=2,
            ref_min_score=6.7, ref_max_score=273.99, success_threshold=0.5,
            maze_map="LARGE_MAZE", eval_goal_cell=(7, 9), dataset_steps=4_000_000, requires=_MAZE_REQUIRES,
        ),
        TaskSpec(
            "hopper", "locomotion", "Hopper-v5", 11, 3, 1000,
            ref_min_score=-20.272305, ref_max_score=3234.3, dataset_steps=1_000_000,
            requires=_MUJOCO_REQUIRES,
        ),
        TaskSpec(
            "halfcheetah", "locomotion", "HalfCheetah-v5", 17, 6, 1000,
            ref_min_score=-280.178953, ref_max_score=12135.0, dataset_steps=1_000_000,
            requires=_MUJOCO_REQUIRES,
        ),
        TaskSpec(
            "walker2d", "locomotion", "Walker2d-v5", 17, 6, 1000,
            ref_min_score=1.629008, ref_max_score=4592.3, dataset_steps=1_000_000, requires=_MUJOCO_REQUIRES,
        ),
        TaskSpec(
            "pusht", "pusht", "gym_pusht/PushT-v0", 5, 2, 300, success_threshold=0.95,
            requires=("gymnasium", "gym_pusht"),
        ),
    )
}  # fmt: skip


def task_names() -> list[str]:
    return list(TASKS)


def base_task_name(name: str) -> str:
    """Task of a task or dataset name: ``hopper-medium-replay`` -> ``hopper``."""
    if name in TASKS:
        return name
    for suffix in DATASET_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in TASKS:
            return name[: -len(suffix)]
    return name


def get_task(name: str) -> TaskSpec:
    """The ``TaskSpec`` of a task (or of a dataset name such as ``hopper-medium``)."""
    if not isinstance(name, str):
        raise ValueError(f"task name must be a string, got {type(name).__name__}")
    spec = TASKS.get(base_task_name(name))
    if spec is None:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return spec


def normalized_score(name: str, returns: Any) -> Any:
    """D4RL normalized score 100 (R - min) / (max - min); uses ``diffctl.datasets.scores`` when present."""
    try:
        from diffctl.datasets.scores import normalized_score as shared
    except ImportError:
        shared = None
    if shared is not None:
        return shared(name, returns)
    import numpy as np

    spec = get_task(name)
    if spec.ref_min_score is None or spec.ref_max_score is None:
        raise ValueError(f"task {spec.name!r} has no D4RL reference returns")
    values = np.asarray(returns, dtype=np.float64)
    score = 100.0 * (values - spec.ref_min_score) / (spec.ref_max_score - spec.ref_min_score)
    return float(score) if score.ndim == 0 else score


def _require(spec: TaskSpec) -> None:
    import importlib.util

    missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
    if not missing:
        return
    extra = "pusht" if "gym_pusht" in missing else "sim"
    raise ImportError(
        f"task {spec.name!r} needs {', '.join(missing)}: install it with `pip install diffctl[{extra}]`"
    )


def register_robotics_envs() -> None:
    """Register gymnasium-robotics' environments with gymnasium. Its import prints a notice about Adroit
    hand rewards (envs diffctl does not use) in every process; that notice is swallowed."""
    import gymnasium as gym

    with contextlib.redirect_stderr(io.StringIO()):
        import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)


def make_env(name: str, seed: int | None = None, render_mode: str | None = None, **kwargs: Any) -> Any:
    """A gymnasium env for ``name`` with a flat float32 Box observation and a Box action in [-1, 1].

    Maze tasks never terminate and never switch goals inside an episode (D4RL evaluation); they are
    truncated at the D4RL episode limit. ``seed`` seeds the first ``reset``.
    """
    spec = get_task(name)
    _require(spec)
    from diffctl.envs import wrappers

    if spec.is_maze:
        env = wrappers.make_maze_env(spec, render_mode=render_mode, **kwargs)
    elif spec.kind == "locomotion":
        env = wrappers.make_locomotion_env(spec, render_mode=render_mode, **kwargs)
    else:
        env = wrappers.make_pusht_env(spec, render_mode=render_mode, **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
