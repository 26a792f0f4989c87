"""Wrap networks into VE denoisers ``D(x, sigma, cond=None) -> x0_hat``.

Samplers only see this form (``x = x0 + sigma * noise``). ``EDMDenoiser`` applies Karras et al.'s
preconditioning; ``VPDenoiser`` adapts DDPM-style eps/x0/v networks trained on ``x_t = sqrt(abar) x0 +
sqrt(1 - abar) eps`` with integer timesteps; ``FlowDenoiser`` adapts velocity networks trained on
``x_t = (1 - t) x0 + t eps``. All networks are called as ``net(x_in, c_noise, cond)`` with ``c_noise``
of shape ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from . import schedules

PREDICTIONS = ("eps", "x0", "v")

__all__ = [
    "PREDICTIONS",
    "ConsistencyDenoiser",
    "EDMDenoiser",
    "FlowDenoiser",
    "PerStepEDMDenoiser",
    "VPDenoiser",
    "batch_sigma",
]


def batch_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a ``(B,)`` tensor with x's dtype and device (scalars are broadcast over the batch)."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        return s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or of shape ({x.shape[0]},), got {tuple(s.shape)}")
    return s


def _expand(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return s.reshape(-1, *([1] * (x.ndim - 1)))


class EDMDenoiser(nn.Module):
    """EDM preconditioning: ``D = c_skip x + c_out net(c_in x, ln(sigma)/4, cond)``.

    ``sigma_data`` is the data standard deviation the network is scaled for (about 0.5 for actions in
    [-1, 1]).
    """

    def __init__(self, net: Callable[..., torch.Tensor], sigma_data: float = 0.5) -> None:
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out, c_in)`` for a tensor of sigmas."""
        sd2 = self.sigma_data**2
        norm = (sigma**2 + sd2).rsqrt()
        return sd2 / (sigma**2 + sd2), sigma * self.sigma_data * norm, norm

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        s = batch_sigma(sigma, x)
        c_skip, c_out, c_in = (_expand(c, x) for c in self.scalings(s))
        out = self.net(c_in * x, s.log() / 4, cond)
        return c_skip * x + c_out * out


class PerStepEDMDenoiser(EDMDenoiser):
    """EDM preconditioning with one sigma per sequence step (streaming buffers): ``x`` ``(B, H, D)``,
    ``sigma`` ``(B,)`` (shared) or ``(B, H)``; the network gets ``c_noise`` of shape ``(B, H)``. A step at
    sigma 0 passes through unchanged."""

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        s = s.reshape(-1, 1).expand(x.shape[:2]) if s.ndim <= 1 else s
        if s.shape != x.shape[:2]:
            raise ValueError(
                f"sigma must have shape ({x.shape[0]},) or {tuple(x.shape[:2])}, got {tuple(s.shape)}"
            )
        c_skip, c_out, c_in = (c.unsqueeze(-1) for c in self.scalings(s))
        return c_skip * x + c_out * self.net(c_in * x, s.clamp_min(1e-20).log() / 4, cond)


class ConsistencyDenoiser(EDMDenoiser):
    """Consistency-model parameterization: EDM scalings shifted so that ``D(x, sigma_min) = x`` exactly."""

    def __init__(
        self, net: Callable[..., torch.Tensor], sigma_data: float = 0.5, sigma_min: float = 0.002
    ) -> None:
        super().__init__(net, sigma_data)
        self.sigma_min = float(sigma_min)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sd2 = self.sigma_data**2
        shifted = sigma - self.sigma_min
        c_skip = sd2 / (shifted**2 + sd2)
        c_out = shifted * self.sigma_data * (sigma**2 + sd2).rsqrt()
        return c_skip, c_out, (sigma**2 + sd2).rsqrt()


class VPDenoiser(nn.Module):
    """Adapt a DDPM-style network (eps, x0 or v prediction) to the VE denoiser form.

    A VE state ``x`` at ``sigma`` is the VP state ``x_vp = x / sqrt(1 + sigma^2)``; the network timestep is
    the training timestep whose noise level is ``sigma``, interpolated linearly in ``log sigma`` between
    integers (exact integers on grids from ``schedules.vp_grid``; ``round_timesteps=True`` snaps to them).
    ``clip_x0`` clamps the predicted clean sample (diffusers' ``clip_sample``).
    """

    def __init__(
        self,
        net: Callable[..., torch.Tensor],
        alphas_cumprod: torch.Tensor,
        prediction: str = "eps",
        clip_x0: float | None = None,
        round_timesteps: bool = False,
    ) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if abar.ndim != 1 or abar.numel() < 2 or not ((abar > 0) & (abar < 1)).all():
            raise ValueError("alphas_cumprod must be 1-D with at least 2 entries in (0, 1)")
        self.net = net
        self.prediction = prediction
        self.clip_x0 = clip_x0
        self.round_timesteps = round_timesteps
        self.register_buffer("train_sigmas", schedules.vp_sigmas(abar), persistent=False)
        self.register_buffer("log_train_sigmas", self.train_sigmas.log(), persistent=False)

    @property
    def num_train_timesteps(self) -> int:
        return self.train_sigmas.numel()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous training timestep of each sigma (clamped to [0, T-1])."""
        logs = self.log_train_sigmas
        ls = sigma.to(logs.dtype).clamp_min(1e-30).log()
        # searchsorted as a comparison count: same index, and it exports to ONNX (opset 17 has no
        # searchsorted); T is at most a few thousand, so the (B, T) comparison is cheap.
        idx = (logs < ls.unsqueeze(-1)).sum(-1).clamp(1, logs.numel() - 1)
        lo, hi = logs[idx - 1], logs[idx]
        t = (idx - 1) + ((ls - lo) / (hi - lo)).clamp(0, 1)
        return t.round() if self.round_timesteps else t

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        s = batch_sigma(sigma, x)
        t = self.sigma_to_t(s).to(x.dtype)
        scale = _expand((1 + s**2).rsqrt(), x)
        out = self.net(x * scale, t, cond)
        se = _expand(s, x)
        if self.prediction == "eps":
            x0 = x - se * out
        elif self.prediction == "x0":
            x0 = out
        else:
            x0 = scale * (x * scale - se * out)
        return x0.clamp(-self.clip_x0, self.clip_x0) if self.clip_x0 is not None else x0


class FlowDenoiser(nn.Module):
    """Adapt a flow-matching velocity network (``v = eps - x0`` on ``x_t = (1-t) x0 + t eps``).

    ``sigma = t / (1 - t)``; the network sees ``x_t = x / (1 + sigma)`` and ``t * time_scale``.
    """

    def __init__(self, net: Callable[..., torch.Tensor], time_scale: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.time_scale = float(time_scale)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        s = batch_sigma(sigma, x)
        t = s / (1 + s)
        xt = x / _expand(1 + s, x)
        v = self.net(xt, t * self.time_scale, cond)
        return xt - _expand(t, x) * v
