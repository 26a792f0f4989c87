"""Dense progress of goal-reaching tasks from the flat state: minus the distance from the achieved goal (the
maze ball, the Fetch gripper or block) to the desired goal, which the observation carries in its last
``goal_dim`` features. Verifiers and world-model rewards use it where the stored reward is sparse."""

from __future__ import annotations

import torch

from diffctl.envs.tasks import get_task

__all__ = ["GoalDistance", "goal_progress"]

_ACHIEVED = {"maze": (0, 2), "fetch-reach": (0, 3), "fetch-push": (3, 6), "fetch-pick-place": (3, 6)}


class GoalDistance:
    """``states (..., D) -> (...)``: minus the Euclidean distance of ``states[..., lo:hi]`` to the goal in the
    last ``goal_dim`` features (a plain object, so agents that hold it still pickle)."""

    def __init__(self, lo: int, hi: int, goal_dim: int, width: int) -> None:
        self.lo, self.hi, self.goal_dim, self.width = lo, hi, goal_dim, width

    def __call__(self, states: torch.Tensor) -> torch.Tensor:
        if states.shape[-1] != self.width:
            raise ValueError(f"states must have {self.width} features (state + goal), got {states.shape[-1]}")
        achieved = states[..., self.lo : self.hi]
        return -(achieved - states[..., -self.goal_dim :]).norm(dim=-1)


def goal_progress(task: str) -> GoalDistance:
    """The progress function of a state-observation goal task (``maze2d-*``, ``fetch-*``); a ValueError
    naming the task otherwise."""
    spec = get_task(task)
    key = "maze" if spec.is_maze else spec.name
    if key not in _ACHIEVED or spec.image_size:
        known = "maze2d-*, " + ", ".join(k for k in _ACHIEVED if k != "maze")
        raise ValueError(f"task {task!r} has no goal-distance progress; it is defined for {known}")
    lo, hi = _ACHIEVED[key]
    return GoalDistance(lo, hi, spec.goal_dim, spec.flat_obs_dim)
