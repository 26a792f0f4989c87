"""Guidance as denoiser combinators: each returns a ``denoise(x, sigma) -> x0_hat`` for ``samplers.sample``.

- ``ClassifierFreeGuidance``: ``u + scale (c - u)`` with cond and uncond in one batched network call.
- ``AdaptiveGuidance``: the same, but each sample stops being guided once a fraction of the noise range is
  passed or once cond/uncond predictions agree (cosine similarity of their implied noise), saving NFE.
- ``GradientGuidance``: shift x0_hat along the gradient of a differentiable value (or minus a cost).
- ``prefix_guidance`` / ``prefix_weights``: pull a chunk's first entries towards known values (real-time
  chunking); ``inpaint_x0``: hard replacement of known entries in x0_hat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .denoisers import batch_sigma

Model = Callable[..., torch.Tensor]

__all__ = [
    "AdaptiveGuidance",
    "ClassifierFreeGuidance",
    "GradientGuidance",
    "cat_cond",
    "inpaint_x0",
    "prefix_guidance",
    "prefix_weights",
    "select_cond",
]


def cat_cond(a: Any, b: Any) -> Any:
    """Concatenate two conditionings (tensors, or dicts/lists/tuples of them) along the batch dim."""
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b.to(a.device, a.dtype) if isinstance(b, torch.Tensor) else b], dim=0)
    if isinstance(a, dict):
        return {k: cat_cond(a[k], b[k]) for k in a}
    if isinstance(a, list | tuple):
        return type(a)(cat_cond(u, v) for u, v in zip(a, b, strict=True))
    if a is None and b is None:
        return None
    raise ValueError(f"cannot batch conditioning of type {type(a).__name__}; use tensors or dicts of tensors")


def select_cond(c: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of a conditioning (tensor or nested dict/list/tuple)."""
    if isinstance(c, torch.Tensor):
        return c[idx]
    if isinstance(c, dict):
        return {k: select_cond(v, idx) for k, v in c.items()}
    if isinstance(c, list | tuple):
        return type(c)(select_cond(v, idx) for v in c)
    return c


def _batch(c: Any) -> int | None:
    if isinstance(c, torch.Tensor):
        return c.shape[0]
    if isinstance(c, dict):
        return next((_batch(v) for v in c.values()), None)
    if isinstance(c, list | tuple) and c:
        return _batch(c[0])
    return None


def _match_uncond(cond: Any, uncond: Any) -> Any:
    """Broadcast a single-row unconditional embedding to the conditional batch."""
    if isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor):
        if uncond.shape[0] == 1 and cond.shape[0] != 1:
            return uncond.expand(cond.shape[0], *uncond.shape[1:])
        return uncond
    if isinstance(cond, dict):
        return {k: _match_uncond(cond[k], uncond[k]) for k in cond}
    if isinstance(cond, list | tuple):
        return type(cond)(_match_uncond(c, u) for c, u in zip(cond, uncond, strict=True))
    return uncond


class ClassifierFreeGuidance:
    """``D = D_u + scale (D_c - D_u)`` from ``model(x, sigma, cond)``; scale 1 costs one call of batch B."""

    def __init__(self, model: Model, cond: Any, uncond: Any, scale: float = 1.0) -> None:
        self.model = model
        self.cond = cond
        self.uncond = _match_uncond(cond, uncond)
        self.scale = float(scale)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        s = batch_sigma(sigma, x)
        if self.scale == 1.0:
            return self.model(x, s, self.cond)
        out = self.model(torch.cat([x, x]), torch.cat([s, s]), cat_cond(self.cond, self.uncond))
        c, u = out.chunk(2)
        return u + self.scale * (c - u)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    af, bf = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(1e-30)


class AdaptiveGuidance:
    """Classifier-free guidance that switches itself off per sample to save network evaluations.

    A sample stops being guided (and then costs one evaluation instead of two) once ``sigma`` falls below the
    level reached after ``stop_fraction`` of the grid ``sigmas``, or once the cosine similarity of its
    conditional and unconditional predictions reaches ``cos_threshold`` (``similarity_on="x0"``: the x0
    predictions; ``"eps"``: the implied noise, whose similarity is near 1 already at high noise). The state
    is per sampling run: call ``reset()`` (or change the batch size) before reusing it. ``nfe_saved`` counts
    saved evaluations in full-batch units, ``guided_fraction`` the share of sample-evaluations guided.
    """

    def __init__(
        self,
        model: Model,
        cond: Any,
        uncond: Any,
        scale: float,
        *,
        sigmas: torch.Tensor | Sequence[float] | None = None,
        stop_fraction: float | None = None,
        cos_threshold: float | None = None,
        similarity_on: str = "x0",
    ) -> None:
        if similarity_on not in ("x0", "eps"):
            raise ValueError(f"similarity_on must be 'x0' or 'eps', got {similarity_on!r}")
        if stop_fraction is not None:
            if sigmas is None:
                raise ValueError("stop_fraction needs the sampling grid: pass sigmas=")
            if not 0 <= stop_fraction <= 1:
                raise ValueError(f"stop_fraction must lie in [0, 1], got {stop_fraction}")
        if cos_threshold is not None and not -1 <= cos_threshold <= 1:
            raise ValueError(f"cos_threshold must lie in [-1, 1], got {cos_threshold}")
        self.model = model
        self.cond = cond
        self.uncond = _match_uncond(cond, uncond)
        self.scale = float(scale)
        self.cos_threshold = cos_threshold
        self.similarity_on = similarity_on
        self.stop_sigma = -math.inf
        if stop_fraction is not None and sigmas is not None:
            grid = [float(v) for v in torch.as_tensor(sigmas).reshape(-1)]
            steps = len(grid) - 1
            self.stop_sigma = grid[min(steps, math.ceil(stop_fraction * steps))]
        self.reset()

    def reset(self) -> None:
        self.active: torch.Tensor | None = None
        self.calls = 0
        self.sample_evals = 0
        self.guided_evals = 0

    @property
    def nfe_saved(self) -> float:
        b = self.active.numel() if self.active is not None else 1
        return (2 * self.calls * b - self.sample_evals) / b

    @property
    def guided_fraction(self) -> float:
        b = self.active.numel() if self.active is not None else 1
        return self.guided_evals / max(1, self.calls * b)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        s = batch_sigma(sigma, x)
        b = x.shape[0]
        if self.active is None or self.active.numel() != b:
            self.reset()
            self.active = torch.ones(b, dtype=torch.bool, device=x.device)
        self.active &= s > self.stop_sigma
        if self.scale == 1.0:
            self.active.zero_()
        idx = self.active.nonzero().squeeze(1)
        k = idx.numel()
        self.calls += 1
        self.sample_evals += b + k
        self.guided_evals += k
        if k == 0:
            return self.model(x, s, self.cond)
        unc = select_cond(self.uncond, idx) if _batch(self.uncond) == b else self.uncond
        out = self.model(torch.cat([x, x[idx]]), torch.cat([s, s[idx]]), cat_cond(self.cond, unc))
        c, u = out[:b], out[b:]
        guided = u + self.scale * (c[idx] - u)
        if self.cos_threshold is not None:
            if self.similarity_on == "eps":
                xi = x[idx]
                agree = _cosine(xi - c[idx], xi - u) >= self.cos_threshold
            else:
                agree = _cosine(c[idx], u) >= self.cos_threshold
            self.active[idx[agree]] = False
        return c.index_copy(0, idx, guided)


class GradientGuidance:
    """Shift the x0 prediction up the gradient of ``value_fn(x0_hat, sigma) -> (B,)`` (pass minus a cost).

    ``through_denoiser=True``: ``D + scale sigma^2 grad_x value(D(x))`` (score-consistent, backpropagates
    through the network). ``False``: ``D + scale grad_{x0} value(x0)`` evaluated at ``x0 = D(x)`` (no backprop
    through the network; cheaper). No guidance below ``sigma_min`` (the last, nearly clean steps).
    ``max_norm`` clips the per-sample shift.
    """

    def __init__(
        self,
        denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        value_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        scale: float = 1.0,
        *,
        through_denoiser: bool = False,
        sigma_min: float = 0.0,
        max_norm: float | None = None,
    ) -> None:
        self.denoise = denoise
        self.value_fn = value_fn
        self.scale = float(scale)
        self.through_denoiser = through_denoiser
        self.sigma_min = float(sigma_min)
        self.max_norm = max_norm

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        s = batch_sigma(sigma, x)
        if self.scale == 0 or bool((s <= self.sigma_min).all()):
            with torch.no_grad():
                return self.denoise(x, s)
        with torch.enable_grad():
            if self.through_denoiser:
                xg = x.detach().requires_grad_(True)
                x0 = self.denoise(xg, s)
                (g,) = torch.autograd.grad(self.value_fn(x0, s).sum(), xg)
                g = g * s.reshape(-1, *([1] * (x.ndim - 1))) ** 2
            else:
                with torch.no_grad():
                    x0 = self.denoise(x, s)
                x0g = x0.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.value_fn(x0g, s).sum(), x0g)
        shift = self.scale * g
        if self.max_norm is not None:
            norm = shift.reshape(shift.shape[0], -1).norm(dim=1).clamp_min(1e-30)
            shift = shift * (self.max_norm / norm).clamp(max=1.0).reshape(-1, *([1] * (x.ndim - 1)))
        on = (s > self.sigma_min).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return x0.detach() + on * shift


def inpaint_x0(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mask: torch.Tensor, known: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Denoiser whose prediction equals ``known`` where ``mask`` (bool) is set (replacement in x0 space)."""

    def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.to(x.device), known.to(x.device, x.dtype), denoise(x, sigma))

    return guided


def prefix_weights(horizon: int, frozen: int, decay_end: int | None = None) -> torch.Tensor:
    """Real-time-chunking weights over a chunk: 1 for the first ``frozen`` steps, exponential-like decay to 0
    at ``decay_end`` (default: horizon), 0 after. Shape (horizon,)."""
    if not 0 <= frozen <= horizon:
        raise ValueError(f"need 0 <= frozen <= horizon, got frozen={frozen}, horizon={horizon}")
    end = horizon if decay_end is None else decay_end
    if not frozen <= end <= horizon:
        raise ValueError(f"need frozen <= decay_end <= horizon, got decay_end={end}")
    i = torch.arange(horizon, dtype=torch.float64)
    c = ((end - i) / max(1, end - frozen)).clamp(0, 1)
    w = c * torch.expm1(c) / math.expm1(1)
    w[:frozen] = 1.0
    return w


def prefix_guidance(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    prefix: torch.Tensor,
    weights: torch.Tensor,
    scale: float = 1.0,
    *,
    through_denoiser: bool = True,
    max_norm: float | None = None,
) -> GradientGuidance:
    """Guide chunks ``(B, H, D)`` towards ``prefix`` (B or 1, H, D) with per-step ``weights`` (H,)."""
    w = torch.as_tensor(weights)

    def value(x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        wt = w.to(x0.device, x0.dtype).reshape(1, -1, *([1] * (x0.ndim - 2)))
        return -0.5 * (wt * (x0 - prefix.to(x0.device, x0.dtype)) ** 2).reshape(x0.shape[0], -1).sum(1)

    return GradientGuidance(denoise, value, scale, through_denoiser=through_denoiser, max_norm=max_norm)
