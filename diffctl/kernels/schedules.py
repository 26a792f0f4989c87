"""Noise-level grids in the VE convention: descending sigma tensors ending in 0.

Every sampler walks such a grid. VP (DDPM/DDIM) schedules are expressed through
``sigma = sqrt((1 - abar) / abar)`` at the chosen training timesteps, so a VP network wrapped by
``denoisers.VPDenoiser`` and sampled on ``vp_cosine(n, ...)`` reproduces what diffusers' DDIM/DDPM
schedulers do with the same settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SPACINGS = ("leading", "trailing", "linspace")
VP_KINDS = ("linear", "scaled_linear", "cosine", "squaredcos_cap_v2")

__all__ = [
    "SPACINGS",
    "VP_KINDS",
    "custom",
    "flow",
    "karras",
    "karras_at",
    "vp_alphas_cumprod",
    "vp_cosine",
    "vp_grid",
    "vp_linear",
    "vp_sigmas",
    "vp_timesteps",
]


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (number of steps) must be an integer >= 1, got {n!r}")


def _append_zero(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values, values.new_zeros(1)])


def karras_at(index: torch.Tensor, n: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """The Karras sigma at (fractional) level ``index`` in [0, n - 1] of an ``n``-level ``karras`` grid."""
    ramp = (index / max(1, n - 1)).clamp(0, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def karras(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """EDM grid: ``n`` levels from sigma_max to sigma_min uniform in ``sigma^(1/rho)``, then 0 (n+1 long)."""
    _check_n(n)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=dtype)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho).to(dtype)


def vp_alphas_cumprod(
    kind: str = "squaredcos_cap_v2",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> torch.Tensor:
    """Cumulative products of ``1 - beta_t`` for DDPM's beta schedules (diffusers' ``beta_schedule`` names).

    ``linear``: betas evenly spaced in [beta_start, beta_end]; ``scaled_linear``: evenly spaced in sqrt;
    ``cosine``/``squaredcos_cap_v2``: Nichol & Dhariwal's ``cos((t + 0.008) / 1.008 * pi / 2)^2`` with betas
    capped at 0.999. Float64 of shape ``(num_train_timesteps,)``.
    """
    _check_n(num_train_timesteps)
    T = num_train_timesteps
    if kind == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    elif kind == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
    elif kind in ("cosine", "squaredcos_cap_v2"):
        t = torch.arange(T + 1, dtype=torch.float64) / T
        abar = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.clamp(1 - abar[1:] / abar[:-1], max=0.999)
    else:
        raise ValueError(f"unknown VP schedule kind {kind!r}; expected one of {VP_KINDS}")
    return torch.cumprod(1 - betas, dim=0)


def vp_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """VE noise level of every training timestep: ``sqrt((1 - abar) / abar)`` (ascending in t)."""
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - abar) / abar).sqrt()


def vp_timesteps(
    n: int, num_train_timesteps: int = 1000, spacing: str = "leading", steps_offset: int = 0
) -> torch.Tensor:
    """Descending integer training timesteps of an ``n``-step sampler, as diffusers' DDIM/DDPM pick them."""
    _check_n(n)
    T = num_train_timesteps
    if n > T:
        raise ValueError(f"n={n} steps cannot exceed num_train_timesteps={T}")
    if spacing == "leading":
        ts = torch.arange(n, dtype=torch.int64) * (T // n) + steps_offset
        return ts.flip(0)
    if spacing == "trailing":
        ratio = T / n
        return torch.tensor([round(T - k * ratio) - 1 for k in range(n)], dtype=torch.int64)
    if spacing == "linspace":
        return torch.linspace(0, T - 1, n, dtype=torch.float64).round().to(torch.int64).flip(0)
    raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")


def vp_grid(
    n: int,
    alphas_cumprod: torch.Tensor,
    spacing: str = "leading",
    steps_offset: int = 0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Sigma grid at the ``n`` chosen timesteps of a VP schedule given by its ``alphas_cumprod``, then 0."""
    sig = vp_sigmas(alphas_cumprod)
    ts = vp_timesteps(n, len(sig), spacing, steps_offset)
    if int(ts.max()) >= len(sig):
        raise ValueError(f"steps_offset={steps_offset} pushes timestep {int(ts.max())} past {len(sig) - 1}")
    return _append_zero(sig[ts]).to(dtype)


def vp_linear(
    n: int,
    num_train_timesteps: int = 1000,
    spacing: str = "leading",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    steps_offset: int = 0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Grid of DDPM's linear beta schedule sampled at ``n`` timesteps (length n+1, ends in 0)."""
    abar = vp_alphas_cumprod("linear", num_train_timesteps, beta_start, beta_end)
    return vp_grid(n, abar, spacing, steps_offset, dtype)


def vp_cosine(
    n: int,
    num_train_timesteps: int = 1000,
    spacing: str = "leading",
    steps_offset: int = 0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Grid of the squaredcos_cap_v2 schedule sampled at ``n`` timesteps (length n+1, ends in 0).

    ``vp_cosine(100, num_train_timesteps=100)`` is DDPM-100 over every training timestep (Diffusion Policy).
    """
    abar = vp_alphas_cumprod("squaredcos_cap_v2", num_train_timesteps)
    return vp_grid(n, abar, spacing, steps_offset, dtype)


def flow(n: int, t_max: float = 1.0 - 1e-4, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rectified-flow grid: ``t`` uniform from t_max down to 0 mapped to ``sigma = t / (1 - t)`` (length n+1).

    ``t = 1`` would be an infinite sigma, so the grid starts at ``t_max``; the first step from pure noise
    ``x = sigma_0 * eps`` is then the flow Euler step from t_max.
    """
    _check_n(n)
    if not 0 < t_max < 1:
        raise ValueError(f"t_max must lie in (0, 1), got {t_max}")
    t = torch.linspace(t_max, 0, n + 1, dtype=torch.float64)
    return (t / (1 - t)).to(dtype)


def custom(values: Sequence[float] | torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A user grid, validated (1-D, finite, non-negative, strictly descending) with 0 appended if missing."""
    sig = torch.as_tensor(values, dtype=torch.float64).flatten()
    if sig.numel() == 0:
        raise ValueError("custom grid is empty; expected at least one sigma")
    if not torch.isfinite(sig).all() or (sig < 0).any():
        raise ValueError(f"custom grid must hold finite, non-negative sigmas, got {sig.tolist()}")
    if sig[-1] != 0:
        sig = _append_zero(sig)
    if not (sig[1:] < sig[:-1]).all():
        raise ValueError(f"custom grid must be strictly descending, got {sig.tolist()}")
    return sig.to(dtype)
