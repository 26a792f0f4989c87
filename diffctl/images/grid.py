"""Image grids: tile (n, C, H, W) images in [-1, 1] into one PNG (matplotlib, written atomically)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from diffctl.atomic import atomic_path


def tile(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """(n, C, H, W) in [-1, 1] -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, 3) uint8 picture."""
    if images.ndim != 4:
        raise ValueError(f"a grid needs images of shape (n, C, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.expand(-1, 3, -1, -1) if c == 1 else pixels
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[y : y + h, x : x + w] = pixels[i].permute(1, 2, 0).numpy()
    return out


def save_grid(
    images: torch.Tensor, path: str | os.PathLike[str], nrow: int | None = None, scale: int = 4
) -> Path:
    """Write ``tile(images, nrow)`` as a PNG, each pixel ``scale`` x ``scale``; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picture = tile(images, nrow).repeat(scale, axis=0).repeat(scale, axis=1)
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as tmp:
        plt.imsave(str(tmp), picture, format="png")
    return final
