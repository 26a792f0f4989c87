"""ConditionalUnet1d: a temporal U-Net over the action chunk with FiLM conditioning (Diffusion Policy).

Convolutions run along the horizon with actions as channels. Each residual block is two
conv-GroupNorm-Mish layers; the noise embedding and the conditioning vector produce a per-channel scale and
bias (FiLM) applied between them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffctl.nets.layers import check_inputs, noise_embedding


class GemmConv1d(nn.Conv1d):
    """``nn.Conv1d`` (same parameters) computed as unfold + one matrix product.

    On CPU, PyTorch runs short 1-D convolutions at small batch through a slow fallback kernel; for action
    chunks (length <= 64) one GEMM is faster at batch 1 (benchmarks/policy.py measures it). ONNX has no
    unfold, so an ONNX export traces the plain convolution instead (same parameters, same result).
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return super().forward(x)
        (k,), (s,), (p,) = self.kernel_size, self.stride, self.padding
        xp = F.pad(x, (p, p)) if p else x
        cols = xp.unfold(2, k, s)
        b, c, length, _ = cols.shape
        cols = cols.permute(0, 2, 1, 3).reshape(b * length, c * k)
        weight = self.weight.reshape(self.out_channels, -1).t()
        out = cols @ weight if self.bias is None else torch.addmm(self.bias, cols, weight)
        return out.reshape(b, length, self.out_channels).transpose(1, 2)


class Upsample1d(nn.Module):
    """Double the length: nearest-neighbour repeat, then a kernel-3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = GemmConv1d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.repeat_interleave(2, dim=-1))


def _groups(channels: int, n_groups: int) -> int:
    g = min(n_groups, channels)
    while channels % g:
        g -= 1
    return g


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, length preserving."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            GemmConv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(_groups(c_out, n_groups), c_out),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class FiLMResidualBlock1d(nn.Module):
    """Two conv blocks with a FiLM (scale, bias) from the conditioning vector in between."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.conv1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.conv2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = GemmConv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.conv1(x) * (1 + scale) + bias
        return self.conv2(h) + self.skip(x)


class ConditionalUnet1d(nn.Module):
    """``forward(x (B, H, Da), c_noise (B,), cond (B, Dc)) -> (B, H, Da)``.

    ``H`` must be divisible by ``2 ** (len(down_dims) - 1)`` (one stride-2 downsampling
    per level but the last).
    """

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int = 0,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        embed_dim: int = 128,
    ) -> None:
        super().__init__()
        down_dims = tuple(int(d) for d in down_dims)
        factor = 2 ** (len(down_dims) - 1)
        if not down_dims or horizon % factor:
            raise ValueError(f"horizon {horizon} must be divisible by {factor} for down_dims={down_dims}")
        self.action_dim, self.horizon, self.cond_dim = action_dim, horizon, cond_dim
        self.noise_emb = noise_embedding(embed_dim, embed_dim)
        film_dim = embed_dim + cond_dim

        def block(a: int, b: int) -> FiLMResidualBlock1d:
            return FiLMResidualBlock1d(a, b, film_dim, kernel_size, n_groups)

        dims = [action_dim, *down_dims]
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            last = i == len(down_dims) - 1
            sample = nn.Identity() if last else GemmConv1d(b, b, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([block(a, b), block(b, b), sample]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for i in reversed(range(len(down_dims) - 1)):
            deep, skip = down_dims[i + 1], down_dims[i]
            sample = Upsample1d(deep)
            self.up.append(nn.ModuleList([sample, block(deep + skip, skip), block(skip, skip)]))
        self.final = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            GemmConv1d(down_dims[0], action_dim, 1),
        )
        self._factor = factor

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_inputs(x, c_noise, cond, self.cond_dim)
        if x.shape[1] % self._factor:
            raise ValueError(f"chunk length {x.shape[1]} must be divisible by {self._factor}")
        film = self.noise_emb(c_noise)
        if self.cond_dim:
            film = torch.cat([film, cond], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for res1, res2, down in self.down:
            h = res2(res1(h, film), film)
            skips.append(h)
            h = down(h)
        skips.pop()
        for res in self.mid:
            h = res(h, film)
        for up, res1, res2 in self.up:
            h = torch.cat([up(h), skips.pop()], dim=1)
            h = res2(res1(h, film), film)
        return self.final(h).transpose(1, 2)
