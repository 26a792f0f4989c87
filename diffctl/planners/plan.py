"""``Plan``: what a planner returns, and the shift a warm start applies to the previous one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Plan:
    """Sampled plans, best first along axis 1, in raw (unnormalized) units.

    ``states`` ``(B, N, H, Ds)``; ``actions`` ``(B, N, H, Da)`` (Diffuser) or ``(B, N, H - 1, Da)`` from
    inverse dynamics (Decision Diffuser: ``actions[..., t, :]`` moves ``states[..., t, :]`` to ``t + 1``);
    ``values`` ``(B, N)`` predicted returns (None for planners without a value model); ``trajectory``
    ``(B, N, H, D)`` the sampled normalized trajectories (what a warm start re-noises); ``context`` see below.
    """

    states: torch.Tensor
    actions: torch.Tensor
    values: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None
    context: Any = None
    """Planner-specific state a later plan continues from (the coarse-to-fine planner's kept coarse plans);
    the runner hands it back through ``Planner.plan_options``."""


def shift_trajectory(traj: torch.Tensor, steps: int) -> torch.Tensor:
    """Drop the first ``steps`` entries of ``(B, H, D)`` and repeat the last one to keep length ``H``."""
    h = traj.shape[1]
    steps = max(0, min(int(steps), h - 1))
    return torch.cat([traj[:, steps:], traj[:, -1:].expand(-1, steps, -1)], dim=1)
