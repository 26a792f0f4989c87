"""DiT1d: a DiT-style transformer over the action chunk with adaLN-Zero conditioning.

Each action step is a token. The noise embedding plus the projected conditioning vector form one vector
``c`` that sets, per block, the shift/scale of both LayerNorms and a zero-initialized gate on each residual
branch, so every block starts as the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from diffctl.nets.layers import check_inputs, noise_embedding


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """Self-attention + MLP, both modulated and gated by the conditioning vector."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[-1].weight)
        nn.init.zeros_(self.ada[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=-1)
        h = _modulate(self.norm1(x), shift1, scale1)
        x = x + gate1.unsqueeze(1) * self.attn(h, h, h, need_weights=False)[0]
        h = _modulate(self.norm2(x), shift2, scale2)
        return x + gate2.unsqueeze(1) * self.mlp(h)


class DiT1d(nn.Module):
    """``forward(x (B, H, Da), c_noise (B,), cond (B, Dc)) -> (B, H, Da)``."""

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int = 0,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"DiT1d dim {dim} must be divisible by heads {heads}")
        self.action_dim, self.horizon, self.cond_dim = action_dim, horizon, cond_dim
        self.inp = nn.Linear(action_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, horizon, dim) * 0.02)
        self.noise_emb = noise_embedding(dim, dim)
        self.cond_proj = (
            nn.Sequential(nn.Linear(cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if cond_dim else None
        )
        self.blocks = nn.ModuleList([DiTBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, action_dim)
        for layer in (self.final_ada[-1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_inputs(x, c_noise, cond, self.cond_dim)
        if x.shape[1] > self.horizon:
            raise ValueError(f"chunk length {x.shape[1]} exceeds the DiT1d horizon {self.horizon}")
        c = self.noise_emb(c_noise)
        if self.cond_proj is not None:
            c = c + self.cond_proj(cond)
        h = self.inp(x) + self.pos[:, : x.shape[1]]
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        return self.out(_modulate(self.norm(h), shift, scale))
