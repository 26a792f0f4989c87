"""DiT2d: a diffusion transformer over image patches with adaLN-Zero conditioning (Peebles & Xie).

The image is cut into ``patch x patch`` patches (one token each, plus a fixed 2-D sin/cos position
embedding); the noise and label embeddings form the vector that modulates and gates every block (the blocks
of ``DiT1d``), and a modulated linear layer maps tokens back to patches. Same signature as ``UNet2d``:
``net(x (B, C, H, W), c_noise (B,), cond (B,) labels | None)``.
"""

from __future__ import annotations

import torch
from torch import nn

from diffctl.nets.dit1d import DiTBlock, _modulate
from diffctl.nets.unet2d import ImageEmbedding, check_image_inputs


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin/cos position embedding ``(grid * grid, dim)``: half the features per axis."""
    if dim % 4:
        raise ValueError(f"DiT2d dim must be divisible by 4 for its 2-D position embedding, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    yy, xx = torch.meshgrid(pos, pos, indexing="ij")

    def axis(p: torch.Tensor) -> torch.Tensor:
        args = p.reshape(-1, 1) * freqs.reshape(1, -1)
        return torch.cat([args.sin(), args.cos()], dim=1)

    return torch.cat([axis(yy), axis(xx)], dim=1).float()


class DiT2d(nn.Module):
    """Patch transformer; ``patch`` must divide ``image_size``."""

    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int = 0,
        *,
        patch: int = 2,
        dim: int = 192,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"DiT2d patch {patch} must divide image_size {image_size}")
        self.channels, self.image_size, self.num_classes, self.patch = (
            channels,
            image_size,
            num_classes,
            patch,
        )
        self.grid = image_size // patch
        self.patchify = nn.Conv2d(channels, dim, patch, stride=patch)
        self.register_buffer("pos", sincos_2d(dim, self.grid), persistent=False)
        self.embed = ImageEmbedding(dim, num_classes)
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, patch * patch * channels)
        for layer in (self.ada[-1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_image_inputs(x, c_noise, cond, self.num_classes)
        b, p, g = x.shape[0], self.patch, self.grid
        h = self.patchify(x).flatten(2).transpose(1, 2) + self.pos
        c = self.embed(c_noise, cond)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(c).chunk(2, dim=-1)
        h = self.out(_modulate(self.norm(h), shift, scale))  # (B, g*g, p*p*C)
        h = h.reshape(b, g, g, p, p, self.channels).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, self.channels, g * p, g * p)
