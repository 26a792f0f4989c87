"""Image generation on the shared diffusion core: ``ImageDiffusion`` (sample, invert, reconstruct, classify),
the diffusion classifier, metrics without downloaded weights and image grids."""

from diffctl.images.model import ImageDiffusion, ImageDiffusionConfig, Inversion

__all__ = ["ImageDiffusion", "ImageDiffusionConfig", "Inversion"]
