"""Samplers on a descending sigma grid in the VE convention (``x = x0 + sigma * noise``).

``sample`` validates its inputs, wraps the denoiser (NFE count, NaN/inf check, callback, inpainting) into a
``Stepper`` and hands it to one short solver function. Solvers only call ``run.denoise(x, i)`` for the x0
prediction at grid index ``i`` and ``run.step_done(i, x)`` after moving to ``sigmas[i + 1]``. Step
coefficients are computed in float64 from the grid, so float32 states lose nothing to the schedule.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, float, torch.Tensor], Any]

__all__ = [
    "SOLVERS",
    "NonFiniteError",
    "Stepper",
    "ancestral_sigmas",
    "ancestral_step",
    "sample",
    "validate_sigmas",
]


class NonFiniteError(ValueError):
    """The denoiser returned NaN or inf during sampling (its inputs or weights are out of range)."""


def validate_sigmas(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    """The grid as Python floats, checked: 1-D, finite, non-negative, strictly descending, >= 2 entries."""
    sig = torch.as_tensor(sigmas).detach()
    if sig.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, got shape {tuple(sig.shape)}")
    if sig.numel() < 2:
        raise ValueError(f"sigmas needs at least 2 entries (one step), got {sig.numel()}")
    values = sig.to("cpu", torch.float64).tolist()
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"sigmas must be finite and non-negative, got {values}")
    if any(b >= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"sigmas must be strictly descending, got {values}")
    return values


class Stepper:
    """Everything a solver needs besides its update rule: denoiser calls, noise, constraints, bookkeeping."""

    def __init__(
        self,
        denoise: Denoiser,
        sigmas: list[float],
        x: torch.Tensor,
        generator: torch.Generator | None,
        callback: Callback | None,
        mask: torch.Tensor | None,
        known: torch.Tensor | None,
        check_finite: bool,
    ) -> None:
        self.model = denoise
        self.sigmas = sigmas
        self.generator = generator
        self.callback = callback
        self.mask = mask
        self.known = known
        self.check_finite = check_finite
        self.nfe = 0
        self._batch = x.shape[0]
        self._like = x

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like x, drawn from the sampler's generator."""
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)

    def denoise_at(self, x: torch.Tensor, sigma: float, step: int) -> torch.Tensor:
        """One network evaluation at an arbitrary sigma (e.g. Heun's corrector point)."""
        s = torch.full((self._batch,), sigma, dtype=x.dtype, device=x.device)
        out = self.model(x, s)
        self.nfe += 1
        if out.shape != x.shape:
            raise ValueError(
                f"denoiser returned shape {tuple(out.shape)} at step {step}, expected {tuple(x.shape)}"
            )
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise NonFiniteError(f"denoiser returned NaN or inf at step {step} (sigma={sigma:.6g})")
        return out

    def denoise(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """x0 prediction at grid point i; reports it to the callback."""
        x0 = self.denoise_at(x, self.sigmas[i], i)
        if self.callback is not None:
            self.callback(i, x, self.sigmas[i], x0)
        return x0

    def constrain(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Re-impose the known entries at noise level sigma (inpainting)."""
        if self.mask is None:
            return x
        target = self.known if sigma == 0 else self.known + sigma * self.noise(x)
        if self.mask.dtype == torch.bool:
            return torch.where(self.mask, target, x)
        return self.mask * target + (1 - self.mask) * x

    def step_done(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.constrain(x, self.sigmas[i + 1])


def ancestral_sigmas(s0: float, s1: float, eta: float) -> tuple[float, float]:
    """Split a step s0 -> s1 into a deterministic part to s_down and fresh noise of std s_up (DDIM eta)."""
    if s1 == 0 or eta == 0:
        return s1, 0.0
    up = min(s1, eta * math.sqrt(s1**2 * (s0**2 - s1**2) / s0**2))
    return math.sqrt(s1**2 - up**2), up


def ancestral_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    s0: float,
    s1: float,
    eta: float,
    noise: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """One DDIM step from sigma ``s0`` to ``s1`` given the x0 prediction: ``x0 + (s_down / s0) (x - x0) +
    s_up z`` with ``z = noise(x)`` (drawn only when eta > 0 and ``s1 > 0``)."""
    down, up = ancestral_sigmas(s0, s1, eta)
    out = x0 + (down / s0) * (x - x0)
    return out + up * noise(out) if up > 0 else out


def euler(run: Stepper, x: torch.Tensor, eta: float = 0.0) -> torch.Tensor:
    """DDIM in sigma space: ``x <- x0 + (s_down / s) (x - x0) + s_up z``; eta 0 is the Euler ODE step."""
    sig = run.sigmas
    for i in range(len(sig) - 1):
        x0 = run.denoise(x, i)
        x = run.step_done(i, ancestral_step(x, x0, sig[i], sig[i + 1], eta, run.noise))
    return x


def ddim(run: Stepper, x: torch.Tensor, eta: float = 0.0) -> torch.Tensor:
    """DDIM with stochasticity eta (0: deterministic, 1: DDPM posterior)."""
    if eta < 0:
        raise ValueError(f"ddim eta must be >= 0, got {eta}")
    return euler(run, x, eta=eta)


def ddpm(run: Stepper, x: torch.Tensor) -> torch.Tensor:
    """Ancestral sampling = the DDPM posterior step (DDIM with eta 1)."""
    return euler(run, x, eta=1.0)


def heun(run: Stepper, x: torch.Tensor) -> torch.Tensor:
    """EDM's 2nd-order Heun: Euler predictor, trapezoidal corrector (skipped when stepping to sigma 0)."""
    sig = run.sigmas
    for i in range(len(sig) - 1):
        s0, s1 = sig[i], sig[i + 1]
        d = (x - run.denoise(x, i)) / s0
        x_pred = x + (s1 - s0) * d
        if s1 > 0:
            d1 = (x_pred - run.denoise_at(x_pred, s1, i)) / s1
            x_pred = x + (s1 - s0) * 0.5 * (d + d1)
        x = run.step_done(i, x_pred)
    return x


def dpmpp_2m(run: Stepper, x: torch.Tensor) -> torch.Tensor:
    """DPM-Solver++(2M): exponential integrator in ``lambda = -log sigma`` on a linear x0 extrapolation."""
    sig = run.sigmas
    prev: torch.Tensor | None = None
    h_prev = 0.0
    for i in range(len(sig) - 1):
        s0, s1 = sig[i], sig[i + 1]
        x0 = run.denoise(x, i)
        if s1 == 0:
            x = x0
        else:
            h = math.log(s0 / s1)
            x0_mix = x0
            if prev is not None:
                r = h_prev / h
                x0_mix = (1 + 0.5 / r) * x0 - (0.5 / r) * prev
            x = (s1 / s0) * x - math.expm1(-h) * x0_mix
            h_prev = h
        prev = x0
        x = run.step_done(i, x)
    return x


def dpmpp_3m(run: Stepper, x: torch.Tensor) -> torch.Tensor:
    """Third-order multistep exponential integrator: exact integral of the quadratic through 3 x0's."""
    sig = run.sigmas
    hist: list[tuple[torch.Tensor, float]] = []
    for i in range(len(sig) - 1):
        s0, s1 = sig[i], sig[i + 1]
        x0 = run.denoise(x, i)
        lam = -math.log(s0)
        if s1 == 0:
            x = x0
        else:
            h = math.log(s0 / s1)
            em = math.exp(-h)
            x = em * x + (1 - em) * x0
            if hist:
                d01 = (x0 - hist[-1][0]) / (lam - hist[-1][1])
                slope = d01
                if len(hist) == 2:
                    d12 = (hist[-1][0] - hist[-2][0]) / (hist[-1][1] - hist[-2][1])
                    curv = (d01 - d12) / (lam - hist[-2][1])
                    slope = d01 + (lam - hist[-1][1]) * curv
                    x = x + (h * h - 2 * h + 2 - 2 * em) * curv
                x = x + (h - 1 + em) * slope
        hist = [*hist[-1:], (x0, lam)]
        x = run.step_done(i, x)
    return x


def dpmpp_2m_sde(run: Stepper, x: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2M) SDE: decay ``e^{-(1+eta)h}``, noise ``s1 sqrt(1 - e^{-2 eta h})``, midpoint."""
    if eta < 0:
        raise ValueError(f"dpmpp_2m_sde eta must be >= 0, got {eta}")
    sig = run.sigmas
    prev: torch.Tensor | None = None
    h_prev = 0.0
    for i in range(len(sig) - 1):
        s0, s1 = sig[i], sig[i + 1]
        x0 = run.denoise(x, i)
        if s1 == 0:
            x = x0
        else:
            h = math.log(s0 / s1)
            gain = -math.expm1(-(1 + eta) * h)
            x = math.exp(-(1 + eta) * h) * x + gain * x0
            if prev is not None:
                x = x + (0.5 * gain * h / h_prev) * (x0 - prev)
            if eta > 0:
                x = x + s1 * math.sqrt(-math.expm1(-2 * eta * h)) * run.noise(x)
            h_prev = h
        prev = x0
        x = run.step_done(i, x)
    return x


def consistency(run: Stepper, x: torch.Tensor, sigma_min: float = 0.0) -> torch.Tensor:
    """Multistep consistency sampling: jump to x0, re-noise to the next level, repeat."""
    sig = run.sigmas
    for i in range(len(sig) - 1):
        x = run.denoise(x, i)
        s1 = sig[i + 1]
        if s1 > sigma_min:
            x = x + math.sqrt(s1**2 - sigma_min**2) * run.noise(x)
        x = run.step_done(i, x)
    return x


SOLVERS: dict[str, Callable[..., torch.Tensor]] = {
    "euler": euler,
    "ddim": ddim,
    "ddpm": ddpm,
    "heun": heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "consistency": consistency,
}

_OPTIONS = {"euler": {"eta"}, "ddim": {"eta"}, "dpmpp_2m_sde": {"eta"}, "consistency": {"sigma_min"}}


def _broadcast_to(t: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
    try:
        shape = torch.broadcast_shapes(t.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} does not broadcast to x of shape {tuple(x.shape)}"
        )
    return t.to(x.device).expand_as(x)


def sample(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    solver: str = "dpmpp_2m",
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    *,
    mask: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    return_info: bool = False,
    check_finite: bool = True,
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """Integrate from ``sigmas[0]`` down the grid and return the final state (x0 when the grid ends in 0).

    ``x`` is the state at ``sigmas[0]`` (pure noise: ``sigmas[0] * randn``; warm starts: a noised guess).
    ``denoise(x, sigma)`` gets sigma of shape (B,). ``mask``/``known`` (broadcastable to x; mask bool or
    weights in [0, 1]) replace the masked entries by ``known + sigma * noise`` at the start and after every
    step. ``callback(i, x, sigma_i, x0_hat)`` sees every grid-point prediction. Options: ``eta`` (euler, ddim,
    dpmpp_2m_sde), ``sigma_min`` (consistency). ``return_info=True`` returns
    ``(x, {"nfe", "solver", "steps"})``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(SOLVERS)}")
    unknown = set(options) - _OPTIONS.get(solver, set())
    if unknown:
        allowed = sorted(_OPTIONS.get(solver, set()))
        raise ValueError(f"solver {solver!r} got unknown options {sorted(unknown)}; it accepts {allowed}")
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor with a leading batch dimension")
    sig = validate_sigmas(sigmas)
    if (mask is None) != (known is None):
        raise ValueError("mask and known must be given together (inpainting)")
    if mask is not None and known is not None:
        mask = _broadcast_to(torch.as_tensor(mask), x, "mask")
        if mask.dtype != torch.bool:
            mask = mask.to(x.dtype)
        known = _broadcast_to(torch.as_tensor(known, dtype=x.dtype), x, "known")
    run = Stepper(denoise, sig, x, generator, callback, mask, known, check_finite)
    out = SOLVERS[solver](run, run.constrain(x, sig[0]), **options)
    if return_info:
        return out, {"nfe": run.nfe, "solver": solver, "steps": len(sig) - 1}
    return out
