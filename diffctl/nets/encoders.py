"""Observation encoders: turn an observation history ``(B, To, Do)`` into one conditioning vector."""

from __future__ import annotations

import torch
from torch import nn

from diffctl.nets.mlp import mlp


class FlattenEncoder(nn.Module):
    """Concatenate the history: ``(B, To, Do) -> (B, To * Do)``. The Diffusion Policy default for states."""

    def __init__(self, obs_dim: int, n_obs_steps: int) -> None:
        super().__init__()
        self.obs_dim, self.n_obs_steps = obs_dim, n_obs_steps
        self.out_dim = obs_dim * n_obs_steps

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.shape[1:] != (self.n_obs_steps, self.obs_dim):
            expected = (self.n_obs_steps, self.obs_dim)
            raise ValueError(f"observation history must have shape (B, *{expected}), got {tuple(obs.shape)}")
        return obs.flatten(1)


class MLPEncoder(nn.Module):
    """Per-step MLP features, concatenated over the history: ``(B, To, Do) -> (B, To * out)``."""

    def __init__(self, obs_dim: int, n_obs_steps: int, hidden: int = 128, out: int = 64) -> None:
        super().__init__()
        self.obs_dim, self.n_obs_steps = obs_dim, n_obs_steps
        self.net = mlp(obs_dim, out, hidden, depth=1)
        self.out_dim = out * n_obs_steps

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if obs.shape[1:] != (self.n_obs_steps, self.obs_dim):
            expected = (self.n_obs_steps, self.obs_dim)
            raise ValueError(f"observation history must have shape (B, *{expected}), got {tuple(obs.shape)}")
        return self.net(obs).flatten(1)


ENCODERS = {"flatten": FlattenEncoder, "mlp": MLPEncoder}


def build_encoder(name: str, obs_dim: int, n_obs_steps: int, **kwargs: int) -> nn.Module:
    """Encoder by name; each has ``out_dim``."""
    if name not in ENCODERS:
        raise ValueError(f"unknown observation encoder {name!r}; valid: {sorted(ENCODERS)}")
    return ENCODERS[name](obs_dim, n_obs_steps, **kwargs)
