"""Return models for planners: window-start returns-to-go from a batch, and a value network over trajectories.

Diffuser ranks sampled plans by a learned value and steers sampling up its gradient; the network reads a
whole normalized trajectory ``(B, H, D)`` and predicts the normalized discounted return from its first step.
"""

from __future__ import annotations

import torch
from torch import nn

from diffctl.nets import mlp


def window_returns(
    rewards: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, discount: float
) -> torch.Tensor:
    """Discounted return-to-go from each window's first valid step, ``(B,)``.

    ``rewards`` ``(B, H)`` per step (0 on padding), ``returns`` ``(B,)`` the dataset's return-to-go at the
    window's last valid step ``j``, ``mask`` ``(B, H)`` true on steps inside the episode. With ``f`` the first
    valid step: ``sum_{f <= k < j} discount^(k - f) r_k + discount^(j - f) returns``. ``discount`` must be the
    one the dataset computed ``returns`` with.
    """
    if rewards.ndim != 2 or mask.shape != rewards.shape or returns.shape != rewards.shape[:1]:
        raise ValueError(
            f"window_returns needs rewards (B, H), mask (B, H), returns (B,); got {tuple(rewards.shape)}, "
            f"{tuple(mask.shape)}, {tuple(returns.shape)}"
        )
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be in [0, 1], got {discount}")
    valid = mask.bool()
    if not bool(valid.any(1).all()):
        raise ValueError("every window needs at least one valid step (mask all false)")
    h = rewards.shape[1]
    steps = torch.arange(h, device=rewards.device).expand_as(rewards)
    first = torch.where(valid, steps, h).min(1).values
    last = torch.where(valid, steps, -1).max(1).values
    rel = (steps - first[:, None]).to(rewards.dtype)
    before_last = valid & (steps < last[:, None])
    weights = torch.where(before_last, discount**rel, torch.zeros_like(rel))
    tail = discount ** (last - first).to(rewards.dtype)
    return (weights * rewards).sum(1) + tail * returns.to(rewards.dtype)


class ValueNet(nn.Module):
    """``V(trajectory (B, H, D)) -> (B,)``: an MLP on the flattened normalized trajectory."""

    def __init__(self, horizon: int, transition_dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.horizon, self.transition_dim = horizon, transition_dim
        self.net = mlp(horizon * transition_dim, 1, hidden=hidden, depth=depth)

    def forward(self, traj: torch.Tensor) -> torch.Tensor:
        if traj.ndim != 3 or traj.shape[1:] != (self.horizon, self.transition_dim):
            raise ValueError(
                f"ValueNet expects trajectories (B, {self.horizon}, {self.transition_dim}), "
                f"got {tuple(traj.shape)}"
            )
        return self.net(traj.reshape(traj.shape[0], -1)).squeeze(-1)
