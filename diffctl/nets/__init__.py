"""Backbones for diffusion over action chunks, and observation encoders.

Every backbone has the signature ``net(x (B, H, Da), c_noise (B,), cond (B, Dc) | None) -> (B, H, Da)`` that
``kernels.denoisers`` wrap; ``c_noise`` is the preconditioned noise level (EDM) or the timestep (VP).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from diffctl.nets.dit1d import DiT1d
from diffctl.nets.encoders import FlattenEncoder, MLPEncoder, build_encoder
from diffctl.nets.layers import SinusoidalEmbedding
from diffctl.nets.mlp import MLPDenoiserNet, PerStepMLP, mlp
from diffctl.nets.unet1d import ConditionalUnet1d

BACKBONES: dict[str, type[nn.Module]] = {"unet": ConditionalUnet1d, "dit": DiT1d, "mlp": MLPDenoiserNet}


def build_backbone(name: str, action_dim: int, horizon: int, cond_dim: int, **kwargs: Any) -> nn.Module:
    """Backbone by name (``unet``, ``dit``, ``mlp``) with its own keyword options."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    return BACKBONES[name](action_dim, horizon, cond_dim, **kwargs)


__all__ = [
    "BACKBONES",
    "ConditionalUnet1d",
    "DiT1d",
    "FlattenEncoder",
    "MLPDenoiserNet",
    "MLPEncoder",
    "PerStepMLP",
    "SinusoidalEmbedding",
    "build_backbone",
    "build_encoder",
    "mlp",
]
