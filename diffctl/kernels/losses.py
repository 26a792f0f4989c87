"""Training objectives; each returns a per-sample loss of shape (B,) so callers can mask, weight and average.

``weight_mask`` (broadcastable to x0, e.g. an action padding mask of shape (B, H, 1)) turns the per-sample
mean squared error into a weighted mean over the masked entries; fully masked samples get loss 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .denoisers import PREDICTIONS

__all__ = [
    "anchored_loss",
    "consistency_distillation_loss",
    "edm_loss",
    "flow_matching_loss",
    "masked_mse",
    "vp_loss",
]


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, weight_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample mean squared error over all non-batch dims, optionally weighted by a mask."""
    err = (pred - target) ** 2
    if weight_mask is None:
        return err.reshape(err.shape[0], -1).mean(1)
    try:
        m = torch.as_tensor(weight_mask, dtype=err.dtype, device=err.device).expand_as(err)
    except RuntimeError as e:
        raise ValueError(
            f"weight_mask of shape {tuple(weight_mask.shape)} does not broadcast to {tuple(err.shape)}"
        ) from e
    num = (m * err).reshape(err.shape[0], -1).sum(1)
    den = m.reshape(err.shape[0], -1).sum(1)
    return num / den.clamp_min(torch.finfo(err.dtype).tiny)


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def edm_loss(
    denoiser: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    cond: Any = None,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    sigma_data: float | None = None,
    generator: torch.Generator | None = None,
    weight_mask: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
) -> torch.Tensor:
    """EDM denoising loss ``lambda(s) |D(x0 + s n, s) - x0|^2`` with ``ln s ~ N(P_mean, P_std^2)``.

    ``lambda(s) = (s^2 + sd^2) / (s sd)^2`` makes the network target unit-variance; ``sigma_data`` defaults to
    the denoiser's own ``sigma_data`` (0.5 if it has none). Pass ``sigma`` (B,) to fix the noise levels.
    """
    sd = float(sigma_data if sigma_data is not None else getattr(denoiser, "sigma_data", 0.5))
    if sigma is None:
        z = torch.randn(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
        sigma = (P_mean + P_std * z).exp()
    noisy = x0 + _per_sample(sigma, x0) * _randn(x0, generator)
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    return weight * masked_mse(denoiser(noisy, sigma, cond), x0, weight_mask)


def anchored_loss(
    denoiser: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    anchor: torch.Tensor,
    cond: Any = None,
    sigma_min: float = 0.002,
    sigma_max: float = 0.5,
    sigma_data: float | None = None,
    generator: torch.Generator | None = None,
    weight_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Truncated diffusion from anchors (DiffusionDrive): ``lambda(s) |D(x_s, s) - x0|^2`` on the bridge
    ``x_s = x0 + (s / sigma_max) (anchor - x0) + s n`` with ``ln s`` uniform on [ln sigma_min, ln sigma_max].

    At ``sigma_max`` the input is the noised anchor that sampling starts from, and an Euler step of an exact
    denoiser stays on the bridge, so training sees the states a few-step sampler visits. ``lambda`` is EDM's.
    """
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"anchored_loss needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    sd = float(sigma_data if sigma_data is not None else getattr(denoiser, "sigma_data", 0.5))
    u = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
    sigma = torch.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min)))
    s = _per_sample(sigma, x0)
    noisy = x0 + (s / sigma_max) * (anchor - x0) + s * _randn(x0, generator)
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    return weight * masked_mse(denoiser(noisy, sigma, cond), x0, weight_mask)


def vp_loss(
    net: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction: str = "eps",
    cond: Any = None,
    generator: torch.Generator | None = None,
    weight_mask: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
) -> torch.Tensor:
    """DDPM loss: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` with t uniform over the training timesteps.

    The network is called as ``net(x_t, t, cond)`` with float timesteps (as ``VPDenoiser`` does at sampling)
    and regresses eps, x0 or ``v = sqrt(abar) eps - sqrt(1 - abar) x0``.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    abar_all = torch.as_tensor(alphas_cumprod, device=x0.device)
    if timesteps is None:
        timesteps = torch.randint(0, abar_all.numel(), (x0.shape[0],), generator=generator, device=x0.device)
    abar = _per_sample(abar_all[timesteps].to(x0.dtype), x0)
    eps = _randn(x0, generator)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    out = net(xt, timesteps.to(x0.dtype), cond)
    target = {"eps": eps, "x0": x0}.get(prediction)
    if target is None:
        target = abar.sqrt() * eps - (1 - abar).sqrt() * x0
    return masked_mse(out, target, weight_mask)


def flow_matching_loss(
    net: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    cond: Any = None,
    generator: torch.Generator | None = None,
    weight_mask: torch.Tensor | None = None,
    t: torch.Tensor | None = None,
    time_scale: float = 1.0,
    t_sampling: str = "uniform",
) -> torch.Tensor:
    """Flow matching: regress ``v = eps - x0`` at ``x_t = (1 - t) x0 + t eps`` (``FlowDenoiser`` convention).

    ``t_sampling``: ``uniform`` on (0, 1) or ``logit_normal`` (sigmoid of a standard normal).
    """
    if t is None:
        if t_sampling == "uniform":
            t = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device)
        elif t_sampling == "logit_normal":
            t = torch.sigmoid(torch.randn(x0.shape[0], generator=generator, dtype=x0.dtype, device=x0.device))
        else:
            raise ValueError(f"unknown t_sampling {t_sampling!r}; expected 'uniform' or 'logit_normal'")
    eps = _randn(x0, generator)
    te = _per_sample(t, x0)
    xt = (1 - te) * x0 + te * eps
    return masked_mse(net(xt, t * time_scale, cond), eps - x0, weight_mask)


def consistency_distillation_loss(
    student: Callable[..., torch.Tensor],
    target: Callable[..., torch.Tensor],
    teacher: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    cond: Any = None,
    generator: torch.Generator | None = None,
    weight_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Consistency distillation on an ascending-index grid ``sigmas`` (descending values, no trailing 0 used).

    For a random adjacent pair ``s_hi = sigmas[k]``, ``s_lo = sigmas[k+1]``: noise x0 to s_hi, take one Heun
    step of the teacher denoiser to s_lo, and regress ``student(x_hi, s_hi)`` onto the (no-grad) EMA
    ``target(x_lo, s_lo)``. All three are denoisers ``f(x, sigma, cond)``.
    """
    grid = torch.as_tensor(sigmas, dtype=x0.dtype, device=x0.device)
    grid = grid[grid > 0]
    if grid.numel() < 2 or not (grid[1:] < grid[:-1]).all():
        raise ValueError("sigmas must be a descending grid with at least 2 positive entries")
    k = torch.randint(0, grid.numel() - 1, (x0.shape[0],), generator=generator, device=x0.device)
    s_hi, s_lo = grid[k], grid[k + 1]
    x_hi = x0 + _per_sample(s_hi, x0) * _randn(x0, generator)
    with torch.no_grad():
        hi, lo = _per_sample(s_hi, x0), _per_sample(s_lo, x0)
        d = (x_hi - teacher(x_hi, s_hi, cond)) / hi
        x_eul = x_hi + (lo - hi) * d
        d2 = (x_eul - teacher(x_eul, s_lo, cond)) / lo
        x_lo = x_hi + (lo - hi) * 0.5 * (d + d2)
        tgt = target(x_lo, s_lo, cond)
    return masked_mse(student(x_hi, s_hi, cond), tgt, weight_mask)
