"""Small building blocks shared by the backbones: noise-level embeddings and activations."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalEmbedding(nn.Module):
    """Map a scalar per sample (noise level or timestep), shape ``(B,)``, to ``(B, dim)`` sin/cos features."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"SinusoidalEmbedding dim must be an even number >= 2, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = t.reshape(-1, 1).float() * self.freqs.reshape(1, -1)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def noise_embedding(dim: int, hidden: int) -> nn.Sequential:
    """Sinusoidal features followed by a 2-layer MLP, the usual diffusion timestep embedding."""
    return nn.Sequential(
        SinusoidalEmbedding(dim), nn.Linear(dim, hidden), nn.Mish(), nn.Linear(hidden, hidden)
    )


def check_inputs(x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None, cond_dim: int) -> None:
    """Validate the ``(x, c_noise, cond)`` triple every backbone takes."""
    if x.ndim != 3:
        raise ValueError(f"backbone input x must have shape (B, H, Da), got {tuple(x.shape)}")
    if c_noise.shape != (x.shape[0],):
        raise ValueError(f"c_noise must have shape ({x.shape[0]},), got {tuple(c_noise.shape)}")
    if cond_dim and (cond is None or cond.shape != (x.shape[0], cond_dim)):
        got = None if cond is None else tuple(cond.shape)
        raise ValueError(f"cond must have shape ({x.shape[0]}, {cond_dim}), got {got}")
