"""Task facts: one ``TaskSpec`` per task name, D4RL reference returns and normalized scores, and what each
task needs installed.

This module imports nothing from diffctl and no simulator (numpy on first use), so ``diffctl.envs``
(registry, wrappers, maze) and ``diffctl.datasets`` (scores, generators) can both import it without an
import cycle. ``register_robotics_envs`` imports gymnasium / gymnasium-robotics when called.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
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
    image_size: int = 0
    """Side of the square camera frame in the observation dict (0: a flat state observation)."""

    @property
    def flat_obs_dim(self) -> int:
        return self.obs_dim + self.goal_dim

    @property
    def is_maze(self) -> bool:
        return self.kind == "maze"


_MAZE_REQUIRES = ("gymnasium", "gymnasium_robotics", "mujoco")
FETCH_IMAGE_SIZE = 84
"""Camera frames of the ``-image`` Fetch tasks (Diffusion Policy's simulated-camera size; crops of 76)."""


def _fetch_specs() -> list[TaskSpec]:
    """FetchReach / FetchPush / FetchPickAndPlace, each with state observations and an ``-image`` variant
    (camera frame + proprioception 10 + goal 3; ``diffctl.envs.fetch``)."""
    specs = []
    for name, gym_id, state_dim in (
        ("fetch-reach", "FetchReach-v4", 10),
        ("fetch-push", "FetchPush-v4", 25),
        ("fetch-pick-place", "FetchPickAndPlace-v4", 25),
    ):
        common = {"goal_dim": 3, "success_threshold": 0.05, "requires": _MAZE_REQUIRES}
        specs.append(TaskSpec(name, "fetch", gym_id, state_dim, 4, 50, **common))
        specs.append(
            TaskSpec(f"{name}-image", "fetch", gym_id, 10, 4, 50, image_size=FETCH_IMAGE_SIZE, **common)
        )
    return specs


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
        *_fetch_specs(),
        TaskSpec(
            "pusht", "pusht", "gym_pusht/PushT-v0", 5, 2, 300, success_threshold=0.95,
            requires=("gymnasium", "gym_pusht"),
        ),
    )
}  # fmt: skip

# D4RL reference returns (random, expert) of every task that has them; the TaskSpecs above are the source.
REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    spec.name: (spec.ref_min_score, spec.ref_max_score)
    for spec in TASKS.values()
    if spec.ref_min_score is not None and spec.ref_max_score is not None
}
_VERSION_SUFFIX = re.compile(r"-v\d+$")


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


def reference_task(name: str) -> str:
    """The task whose reference returns apply to a task or dataset name (``hopper-medium-v2`` ->
    ``hopper``)."""
    base = _VERSION_SUFFIX.sub("", name.strip().lower())
    if base in REFERENCE_SCORES:
        return base
    for task in sorted(REFERENCE_SCORES, key=len, reverse=True):
        if base.startswith(task + "-"):
            return task
    raise ValueError(f"no D4RL reference score for {name!r}; known tasks: {sorted(REFERENCE_SCORES)}")


def normalized_score(name: str, returns: Any) -> Any:
    """D4RL normalized score ``100 (R - random) / (expert - random)`` of an undiscounted episode return
    (float) or of an array of returns (array)."""
    import numpy as np

    low, high = REFERENCE_SCORES[reference_task(name)]
    values = np.asarray(returns, dtype=np.float64)
    scores = 100.0 * (values - low) / (high - low)
    return float(scores) if scores.ndim == 0 else scores


def require(spec: TaskSpec) -> None:
    """Raise ImportError naming the extra to install when a package ``spec`` needs is missing."""
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
