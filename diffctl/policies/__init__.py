"""Policies: observation -> action agents built on diffusion over action chunks."""

from diffctl.policies.base import Policy, SamplerConfig
from diffctl.policies.diffusion import ChunkDenoiserNet, DiffusionPolicy

__all__ = ["ChunkDenoiserNet", "DiffusionPolicy", "Policy", "SamplerConfig"]
