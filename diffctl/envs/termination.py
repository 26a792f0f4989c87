"""Known termination rules of the locomotion tasks, as functions of the observation.

gymnasium's Hopper-v5 and Walker2d-v5 end an episode when the body leaves a healthy range of height and
torso angle (Hopper also bounds the rest of its state); HalfCheetah never terminates. The observation
starts with the height and the angle (``qpos[1:3]``), so the rule is exact on observations (Hopper's state
bound applies to unclipped velocities, which its observation clips to +-10; a velocity past 100 is the only
case the rule on observations misses). Model-based RL (MBPO, MOPO) uses these rules instead of learned
terminal predictions, which are rare events in the data and the hardest thing for a model to get right.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TerminalFn = Callable[[torch.Tensor], torch.Tensor]
"""Observations ``(..., Do)`` -> terminal flags ``(...)`` (bool)."""

HEALTHY = {  # task: (z range, angle range, bound on the rest of the state or None); gymnasium v5 defaults
    "hopper": ((0.7, float("inf")), (-0.2, 0.2), 100.0),
    "walker2d": ((0.8, 2.0), (-1.0, 1.0), None),
}


def _rule(z_range: tuple[float, float], angle_range: tuple[float, float], bound: float | None) -> TerminalFn:
    def terminal(obs: torch.Tensor) -> torch.Tensor:
        obs = torch.as_tensor(obs)
        z, angle = obs[..., 0], obs[..., 1]
        healthy = (z > z_range[0]) & (z < z_range[1]) & (angle > angle_range[0]) & (angle < angle_range[1])
        if bound is not None:
            healthy &= (obs[..., 1:].abs() < bound).all(dim=-1)
        return ~healthy

    return terminal


def never(obs: torch.Tensor) -> torch.Tensor:
    """The rule of tasks that only end by time limit."""
    return torch.zeros(torch.as_tensor(obs).shape[:-1], dtype=torch.bool)


def termination_fn(task: str) -> TerminalFn | None:
    """The termination rule of ``task`` (``hopper``, ``walker2d``, ``halfcheetah`` or a dataset name of
    theirs), None for tasks without a known rule."""
    name = task.split("-")[0]
    if name in HEALTHY:
        return _rule(*HEALTHY[name])
    return never if name == "halfcheetah" else None
