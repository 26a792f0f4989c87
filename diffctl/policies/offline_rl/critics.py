"""Q-learning parts shared by the offline RL agents: twin critics, target networks, IQL expectile value.

Critics are called with the agent's normalized state (observation, plus the goal when the task has one) and
normalized action. Their first module, ``StateInput``, maps that state to what the critic's MLP sees: the
same normalized state (Diffusion-QL's critics) or the raw state (IQL's, which reads unnormalized
observations). Only true ``terminals`` cut bootstrapping; episodes that end by a time limit keep
bootstrapping (the transition sampler drops steps whose next observation is unknown).
"""

from __future__ import annotations

import torch
from torch import nn

from diffctl.nets import mlp


class StateInput(nn.Module):
    """A fixed per-feature affine map ``state * scale + offset`` in front of a critic (identity until set).

    Its buffers are not saved: the agent derives them from its normalizers (``set_state_inputs``)."""

    def __init__(self, state_dim: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(state_dim), persistent=False)
        self.register_buffer("offset", torch.zeros(state_dim), persistent=False)

    @torch.no_grad()
    def set(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        self.scale.copy_(scale)
        self.offset.copy_(offset)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return state * self.scale + self.offset


def set_state_inputs(module: nn.Module, scale: torch.Tensor, offset: torch.Tensor) -> None:
    """Set every ``StateInput`` inside ``module`` (online and target critics, value net) to one map."""
    for m in module.modules():
        if isinstance(m, StateInput):
            m.set(scale, offset)


class TwinQ(nn.Module):
    """Two independent ``Q(s, a)`` MLPs (clipped double Q); ``forward`` returns both as ``(B,)`` tensors."""

    def __init__(
        self, state_dim: int, action_dim: int, hidden: int = 256, depth: int = 3, activation: str = "mish"
    ) -> None:
        super().__init__()
        self.state_input = StateInput(state_dim)
        self.q1 = mlp(state_dim + action_dim, 1, hidden, depth, activation)
        self.q2 = mlp(state_dim + action_dim, 1, hidden, depth, activation)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sa = torch.cat([self.state_input(state), action], dim=-1)
        return self.q1(sa).squeeze(-1), self.q2(sa).squeeze(-1)

    def q_min(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The pessimistic estimate ``min(Q1, Q2)``."""
        q1, q2 = self(state, action)
        return torch.minimum(q1, q2)


class ValueNet(nn.Module):
    """State value ``V(s)`` (IQL's expectile of Q over the behaviour actions), ``(B,)``."""

    def __init__(self, state_dim: int, hidden: int = 256, depth: int = 3, activation: str = "mish") -> None:
        super().__init__()
        self.state_input = StateInput(state_dim)
        self.v = mlp(state_dim, 1, hidden, depth, activation)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.v(self.state_input(state)).squeeze(-1)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False`` (a target network the optimizer never sees)."""
    import copy

    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) target + tau online`` for every parameter (tau = 1 copies)."""
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"target update rate tau must be in (0, 1], got {tau}")
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o.detach(), tau)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared loss ``|tau - 1(diff < 0)| diff^2`` per element (IQL, diff = Q - V)."""
    if not 0.0 < expectile < 1.0:
        raise ValueError(f"expectile must be in (0, 1), got {expectile}")
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return weight * diff**2


def td_target(
    rewards: torch.Tensor, terminals: torch.Tensor, next_values: torch.Tensor, discount: float
) -> torch.Tensor:
    """One-step Bellman target ``r + discount * (1 - terminal) * V(s')`` (timeouts are not terminals)."""
    return rewards + discount * (1.0 - terminals.to(rewards.dtype)) * next_values


def returns_reward_scale(rewards: torch.Tensor | list[float], episode_ends: list[int]) -> float:
    """IQL's locomotion reward scale ``1000 / (max episode return - min episode return)``."""
    r = torch.as_tensor(rewards, dtype=torch.float64).reshape(-1)
    ends = torch.as_tensor(episode_ends, dtype=torch.int64)
    if ends.numel() == 0:
        raise ValueError("returns_reward_scale needs at least one episode")
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    csum = torch.cat([r.new_zeros(1), r.cumsum(0)])
    returns = csum[ends] - csum[starts]
    span = float(returns.max() - returns.min())
    if span <= 1e-8:
        raise ValueError(
            f"reward_normalization='returns' needs episodes with different returns; all returns are "
            f"{float(returns[0]):.6g}"
        )
    return 1000.0 / span
