"""Inverting the deterministic sampler: DDIM inversion and EDICT's exactly invertible coupled steps.

Both work on any denoiser ``denoise(x, sigma) -> x0_hat`` and a descending grid ``sigmas`` that ends at its
smallest non-zero level (drop a trailing 0): the image is the state at ``sigmas[-1]`` and the latent the
state at ``sigmas[0]``. One DDIM (Euler) step from ``s`` to ``s'`` is the affine map
``x' = a x + (1 - a) D(x, s)`` with ``a = s'/s``.

- ``ddim_invert`` runs it backwards with ``D`` evaluated at the lower level instead of the unknown upper
  one; exact only as the step count grows.
- ``edict_invert`` / ``edict_sample`` (Wallace et al., EDICT) carry two sequences ``x, y``; each step updates
  one from the other and mixes them with weight ``p``, so every step is an affine map whose inverse is
  computed exactly (up to float rounding) from the same network evaluations. The two sequences are kept
  in float64 while the network runs in its own dtype: rounding the affine bookkeeping to float32 compounds
  through the mixing inverse (about 1e-3 after 50 steps), in float64 a float32 network inverts to 0 error.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["ddim_invert", "ddim_sample", "edict_invert", "edict_sample", "inversion_grid"]


def inversion_grid(sigmas: torch.Tensor) -> torch.Tensor:
    """``sigmas`` without a trailing 0 (the image sits at the smallest non-zero level)."""
    s = torch.as_tensor(sigmas)
    if s.ndim != 1 or len(s) < 2:
        raise ValueError(f"sigmas must be a 1-D grid of at least 2 levels, got shape {tuple(s.shape)}")
    s = s[:-1] if float(s[-1]) == 0.0 else s
    if len(s) < 2 or not bool((s[:-1] > s[1:]).all()) or float(s[-1]) <= 0:
        raise ValueError(
            "an inversion grid must be strictly descending and positive (a trailing 0 is dropped)"
        )
    return s


def _level(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.to(x.dtype).expand(x.shape[0])


def ddim_sample(denoise: Denoise, latent: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Euler / DDIM from ``sigmas[0]`` down to ``sigmas[-1]`` (no final jump to 0)."""
    s = inversion_grid(sigmas).to(latent.device)
    x = latent
    for i in range(len(s) - 1):
        a = s[i + 1] / s[i]
        x = a * x + (1 - a) * denoise(x, _level(s[i], x))
    return x


def ddim_invert(denoise: Denoise, image: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """The DDIM latent at ``sigmas[0]`` of ``image`` (at ``sigmas[-1]``), ``D`` taken at the lower level."""
    s = inversion_grid(sigmas).to(image.device)
    x = image
    for i in range(len(s) - 2, -1, -1):
        a = s[i + 1] / s[i]
        x = (x - (1 - a) * denoise(x, _level(s[i + 1], x))) / a
    return x


def _check_p(p: float) -> float:
    if not 0.5 <= p < 1.0:
        raise ValueError(f"EDICT mixing weight p must lie in [0.5, 1), got {p}")
    return float(p)


def _in_state(denoise: Denoise, dtype: torch.dtype) -> Denoise:
    """``denoise`` fed in ``dtype`` (the network's) and answering in float64 (the state's)."""

    def wrapped(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoise(x.to(dtype), sigma.to(dtype)).double()

    return wrapped


def edict_sample(
    denoise: Denoise, x: torch.Tensor, y: torch.Tensor, sigmas: torch.Tensor, p: float = 0.93,
    net_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """EDICT's coupled deterministic sampling from ``(x, y)`` at ``sigmas[0]`` to ``sigmas[-1]`` (float64
    states, the network called in ``net_dtype``)."""
    p = _check_p(p)
    denoise = _in_state(denoise, net_dtype)
    x, y = x.double(), y.double()
    s = inversion_grid(sigmas).to(x.device, torch.float64)
    for i in range(len(s) - 1):
        a, level = s[i + 1] / s[i], _level(s[i], x)
        x_mid = a * x + (1 - a) * denoise(y, level)
        y_mid = a * y + (1 - a) * denoise(x_mid, level)
        x = p * x_mid + (1 - p) * y_mid
        y = p * y_mid + (1 - p) * x
    return x, y


def edict_invert(
    denoise: Denoise, image: torch.Tensor, sigmas: torch.Tensor, p: float = 0.93,
    net_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The float64 EDICT latents ``(x, y)`` at ``sigmas[0]`` from which ``edict_sample`` returns ``image``."""
    p = _check_p(p)
    denoise = _in_state(denoise, net_dtype)
    s = inversion_grid(sigmas).to(image.device, torch.float64)
    x = y = image.double()
    for i in range(len(s) - 2, -1, -1):
        a, level = s[i + 1] / s[i], _level(s[i], x)
        y_mid = (y - (1 - p) * x) / p
        x_mid = (x - (1 - p) * y_mid) / p
        y = (y_mid - (1 - a) * denoise(x_mid, level)) / a
        x = (x_mid - (1 - a) * denoise(y, level)) / a
    return x, y
