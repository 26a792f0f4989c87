"""MLP backbones for small problems: the whole chunk is flattened and denoised by residual MLP blocks."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from diffctl.nets.layers import SinusoidalEmbedding, check_inputs, noise_embedding

ACTIVATIONS: dict[str, type[nn.Module]] = {"mish": nn.Mish, "relu": nn.ReLU}


def mlp(
    in_dim: int, out_dim: int, hidden: int = 256, depth: int = 2, activation: str = "mish"
) -> nn.Sequential:
    """Plain MLP with ``depth`` hidden layers and ``activation`` (a key of ``ACTIVATIONS``) after each."""
    if depth < 1:
        raise ValueError(f"mlp depth must be >= 1, got {depth}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden] * depth
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    """``h + Linear(Mish(Linear(LayerNorm(h))))``, with a dropout layer in the middle unless ``dropout`` is
    None (the layer's presence sets the parameter names, which saved networks depend on)."""

    def __init__(self, hidden: int, dropout: float | None) -> None:
        super().__init__()
        middle = [] if dropout is None else [nn.Dropout(dropout)]
        self.net = nn.Sequential(
            nn.LayerNorm(hidden),
            nn.Linear(hidden, 2 * hidden),
            nn.Mish(),
            *middle,
            nn.Linear(2 * hidden, hidden),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


class MLPDenoiserNet(nn.Module):
    """``forward(x (B, H, Da), c_noise (B,), cond (B, Dc)) -> (B, H, Da)`` with a flattened-chunk MLP."""

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int = 0,
        hidden: int = 256,
        depth: int = 3,
        embed_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.action_dim, self.horizon, self.cond_dim = action_dim, horizon, cond_dim
        self.noise_emb = noise_embedding(embed_dim, embed_dim)
        self.inp = nn.Linear(horizon * action_dim + embed_dim + cond_dim, hidden)
        self.blocks = nn.Sequential(*[_ResidualBlock(hidden, dropout) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, horizon * action_dim))

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_inputs(x, c_noise, cond, self.cond_dim)
        parts = [x.flatten(1), self.noise_emb(c_noise)]
        if self.cond_dim:
            parts.append(cond)
        h = self.blocks(self.inp(torch.cat(parts, dim=-1)))
        return self.out(h).reshape(x.shape)


class PerStepMLP(nn.Module):
    """``forward(x (B, H, Da), c_noise (B, H), cond (B, Dc)) -> (B, H, Da)``: flattened-chunk residual MLP
    with one sinusoidal+linear noise embedding per timestep."""

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int,
        hidden: int = 256,
        depth: int = 3,
        embed_dim: int = 16,
    ) -> None:
        super().__init__()
        self.horizon, self.cond_dim = horizon, cond_dim
        self.noise_emb = nn.Sequential(
            SinusoidalEmbedding(embed_dim), nn.Linear(embed_dim, embed_dim), nn.Mish()
        )
        self.inp = nn.Linear(horizon * (action_dim + embed_dim) + cond_dim, hidden)
        self.blocks = nn.Sequential(*[_ResidualBlock(hidden, None) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, horizon * action_dim))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        b = x.shape[0]
        if c_noise.shape != x.shape[:2]:
            raise ValueError(f"c_noise must have shape {tuple(x.shape[:2])}, got {tuple(c_noise.shape)}")
        emb = self.noise_emb(c_noise.reshape(-1)).reshape(b, -1)
        parts = [x.flatten(1), emb] + ([cond] if self.cond_dim else [])
        return self.out(self.blocks(self.inp(torch.cat(parts, dim=-1)))).reshape(x.shape)
