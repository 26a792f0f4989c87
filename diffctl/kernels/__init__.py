"""Diffusion kernels: noise grids, denoiser wrappers, samplers, guidance, losses and an exact test bed.

Pure math on torch tensors in the VE convention ``x = x0 + sigma * noise``; imports nothing else of diffctl.
"""

from . import analytic, denoisers, guidance, inversion, losses, samplers, schedules, steering
from .samplers import SOLVERS, sample

__all__ = [
    "SOLVERS",
    "analytic",
    "denoisers",
    "guidance",
    "inversion",
    "losses",
    "sample",
    "samplers",
    "schedules",
    "steering",
]
