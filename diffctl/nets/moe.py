"""Noise-routed mixture-of-experts MLP denoiser (MoDE, Reuss et al. 2024).

Each residual block holds ``num_experts`` MLP experts and a router that reads only the noise embedding, never
the sample: at a given noise level every sample takes the same ``top_k`` experts. A batch at one noise level
(every sampling step) therefore runs ``top_k`` experts instead of all of them, and the routing of a fixed
sampling grid is known before sampling. Rows are gathered per expert, so training costs what a dense block of
one expert's size costs times ``top_k``.
"""

from __future__ import annotations

import torch
from torch import nn

from diffctl.nets.layers import check_inputs, noise_embedding

__all__ = ["MoEDenoiserNet", "NoiseRoutedMoEBlock"]


class NoiseRoutedMoEBlock(nn.Module):
    """``h + sum_e w_e(noise) expert_e(LayerNorm(h))`` over the ``top_k`` experts of the noise level."""

    def __init__(self, hidden: int, embed_dim: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must lie in [1, num_experts={num_experts}], got {top_k}")
        self.top_k = top_k
        self.norm = nn.LayerNorm(hidden)
        self.router = nn.Linear(embed_dim, num_experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.Mish(), nn.Linear(2 * hidden, hidden))
            for _ in range(num_experts)
        )

    def routing(self, emb: torch.Tensor) -> torch.Tensor:
        """Weights (B, E): softmax over each row's ``top_k`` router logits, zero elsewhere."""
        logits = self.router(emb)
        top, idx = logits.topk(self.top_k, dim=-1)
        return torch.zeros_like(logits).scatter(-1, idx, top.softmax(dim=-1))

    def mix(self, h: torch.Tensor, experts: list[int], weights: list[float]) -> torch.Tensor:
        """``h`` plus the fixed mixture of ``experts``: a batch at one noise level, its routing cached."""
        x = self.norm(h)
        return h + sum(w * self.experts[e](x) for e, w in zip(experts, weights, strict=True))

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        weights = self.routing(emb)
        x = self.norm(h)
        if torch.jit.is_tracing():  # a traced graph must not freeze one noise level's experts: run them all
            return h + sum(weights[:, e, None] * expert(x) for e, expert in enumerate(self.experts))
        active = weights.any(dim=0).nonzero().flatten().tolist()
        if len(active) == self.top_k:  # one noise level for the whole batch (a sampling step): no gathers
            return h + sum(weights[:, e, None] * self.experts[e](x) for e in active)
        out = torch.zeros_like(h)
        for e in active:
            rows = weights[:, e].nonzero().flatten()
            out = out.index_add(0, rows, weights[rows, e, None] * self.experts[e](x[rows]))
        return h + out


class MoEDenoiserNet(nn.Module):
    """``forward(x (B, H, Da), c_noise (B,), cond (B, Dc)) -> (B, H, Da)``: the flattened-chunk MLP denoiser
    with noise-routed mixture-of-experts blocks."""

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int = 0,
        hidden: int = 256,
        depth: int = 3,
        embed_dim: int = 64,
        num_experts: int = 4,
        top_k: int = 1,
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.noise_emb = noise_embedding(embed_dim, embed_dim)
        self.inp = nn.Linear(horizon * action_dim + embed_dim + cond_dim, hidden)
        self.blocks = nn.ModuleList(
            NoiseRoutedMoEBlock(hidden, embed_dim, num_experts, top_k) for _ in range(depth)
        )
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, horizon * action_dim))

        self.routes: dict[tuple, list[tuple[list[int], list[float]]]] = {}

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_inputs(x, c_noise, cond, self.cond_dim)
        emb = self.noise_emb(c_noise)
        parts = [x.flatten(1), emb] + ([cond] if self.cond_dim else [])
        h = self.inp(torch.cat(parts, dim=-1))
        route = self.cached_route(c_noise, emb)
        for i, block in enumerate(self.blocks):
            h = block(h, emb) if route is None else block.mix(h, *route[i])
        return self.out(h).reshape(x.shape)

    def cached_route(
        self, c_noise: torch.Tensor, emb: torch.Tensor
    ) -> list[tuple[list[int], list[float]]] | None:
        """Expert caching: without gradients, a batch at one noise level reuses that level's experts and
        weights, computed on its first visit; the key holds the version of every router parameter, so an
        update or a load recomputes them. None in training, under tracing or for mixed noise levels."""
        if self.training or torch.jit.is_tracing() or torch.is_grad_enabled():
            return None
        level = c_noise.reshape(-1)
        if bool((level != level[0]).any()):
            return None
        versions = tuple(p._version for block in self.blocks for p in block.router.parameters())
        key = (float(level[0]), versions)
        if key not in self.routes:
            if len(self.routes) > 4096:  # many grids over a long life: start over
                self.routes.clear()
            rows = [block.routing(emb[:1])[0] for block in self.blocks]
            self.routes[key] = [(w.nonzero().flatten().tolist(), w[w > 0].tolist()) for w in rows]
        return self.routes[key]

    def active_experts(self, c_noise: torch.Tensor) -> list[list[int]]:
        """The experts each block runs at the noise level ``c_noise`` (a scalar): a grid's routing cache."""
        emb = self.noise_emb(c_noise.reshape(1))
        return [block.routing(emb)[0].nonzero().flatten().tolist() for block in self.blocks]
