"""Backbones for diffusion over action chunks and images, and observation encoders.

Every backbone has the signature ``net(x, c_noise (B,), cond) -> x-shaped`` that ``kernels.denoisers`` wrap;
``c_noise`` is the preconditioned noise level (EDM) or the timestep (VP). Chunk backbones take ``x`` of shape
(B, H, Da) and ``cond`` (B, Dc) or None; image backbones take ``x`` (B, C, H, W) and ``cond`` (B,) integer
labels or None.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffctl.nets.dit1d import DiT1d
from diffctl.nets.dit2d import DiT2d
from diffctl.nets.encoders import FlattenEncoder, MLPEncoder, build_encoder
from diffctl.nets.layers import SinusoidalEmbedding
from diffctl.nets.mlp import MLPDenoiserNet, PerStepMLP, mlp
from diffctl.nets.moe import MoEDenoiserNet
from diffctl.nets.unet1d import ConditionalUnet1d
from diffctl.nets.unet2d import UNet2d

BACKBONES: dict[str, type[nn.Module]] = {
    "unet": ConditionalUnet1d, "dit": DiT1d, "mlp": MLPDenoiserNet, "moe": MoEDenoiserNet,
}  # fmt: skip
IMAGE_BACKBONES: dict[str, type[nn.Module]] = {"unet2d": UNet2d, "dit2d": DiT2d}


def build_backbone(name: str, action_dim: int, horizon: int, cond_dim: int, **kwargs: Any) -> nn.Module:
    """Backbone by name (``unet``, ``dit``, ``mlp``, ``moe``) with its own keyword options."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    return BACKBONES[name](action_dim, horizon, cond_dim, **kwargs)


def build_image_backbone(
    name: str, channels: int, image_size: int, num_classes: int, **kwargs: Any
) -> nn.Module:
    """Image backbone by name (``unet2d``, ``dit2d``) with its own keyword options."""
    if name not in IMAGE_BACKBONES:
        raise ValueError(f"unknown image backbone {name!r}; valid: {sorted(IMAGE_BACKBONES)}")
    try:
        return IMAGE_BACKBONES[name](channels, image_size, num_classes, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad backbone_kwargs for {name}: {err}") from err


__all__ = [
    "BACKBONES",
    "IMAGE_BACKBONES",
    "ConditionalUnet1d",
    "DiT1d",
    "DiT2d",
    "FlattenEncoder",
    "MLPDenoiserNet",
    "MLPEncoder",
    "MoEDenoiserNet",
    "PerStepMLP",
    "SinusoidalEmbedding",
    "UNet2d",
    "build_backbone",
    "build_encoder",
    "build_image_backbone",
    "mlp",
]
