"""Inverse dynamics ``a_t = f(s_t, s_{t+1})``: turns a state-only plan into actions (Decision Diffuser)."""

from __future__ import annotations

import torch
from torch import nn

from diffctl.nets import mlp


class InverseDynamics(nn.Module):
    """MLP on ``[s_t, s_{t+1}]`` (normalized) -> normalized action, squashed to [-1, 1] by ``tanh``."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.state_dim, self.action_dim = state_dim, action_dim
        self.net = mlp(2 * state_dim, action_dim, hidden=hidden, depth=depth)

    def forward(self, state: torch.Tensor, next_state: torch.Tensor) -> torch.Tensor:
        if state.shape != next_state.shape or state.shape[-1] != self.state_dim:
            raise ValueError(
                f"inverse dynamics needs state and next_state of equal shape (..., {self.state_dim}); "
                f"got {tuple(state.shape)} and {tuple(next_state.shape)}"
            )
        return torch.tanh(self.net(torch.cat([state, next_state], dim=-1)))

    def loss(
        self, states: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Mean squared error of ``f(s_t, s_{t+1})`` against ``a_t`` over consecutive pairs of ``(B, H, D)``
        windows; ``mask`` ``(B, H)`` keeps only pairs whose two steps are both valid."""
        pred = self(states[:, :-1], states[:, 1:])
        err = ((pred - actions[:, :-1]) ** 2).mean(-1)
        if mask is None:
            return err.mean()
        pair = (mask[:, :-1] & mask[:, 1:]).to(err.dtype)
        return (err * pair).sum() / pair.sum().clamp_min(1.0)
