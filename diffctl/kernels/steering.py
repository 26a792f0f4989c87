"""Inference-time steering: best-of-N and Feynman-Kac (SMC) particles through the denoising chain.

Samples come in groups of ``particles`` consecutive rows (row ``g * K + k`` is particle ``k`` of group ``g``),
so one batched denoiser call moves every group. A ``reward(x0) -> (N,)`` scores clean samples; steering
targets the tilted distribution ``p(x0) exp(lam * reward(x0)) / Z``.

``fk_steer`` (Singhal et al., "A general framework for inference-time scaling and steering of diffusion
models") runs the K particles of each group through the DDIM / ancestral chain. At every grid point it scores
the current x0 prediction and multiplies the particle's weight by the *difference* potential
``exp(lam (r_i - r_{i-1}))``; the product over the chain telescopes to ``exp(lam * reward(x0))``, so the
weighted particles target the tilted distribution exactly as K grows, whatever the intermediate rewards. When
a group's effective sample size falls below ``ess_threshold * K`` its particles are resampled (systematic)
before the step, and stochastic steps (eta > 0) let duplicates diverge again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .samplers import Denoiser, Stepper, ancestral_step, validate_sigmas

__all__ = [
    "SteerResult",
    "best_of_n",
    "effective_sample_size",
    "fk_steer",
    "select",
    "systematic_resample",
]

Reward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SteerResult:
    """Final particles ``x`` (N, ...), their normalized per-group ``log_weights`` (G, K) and ``rewards``
    (G, K), the denoiser calls (``nfe``), reward calls and resampling events."""

    x: torch.Tensor
    log_weights: torch.Tensor
    rewards: torch.Tensor
    nfe: int
    reward_calls: int
    resamples: int


def _groups(n: int, particles: int) -> int:
    if int(particles) < 1:
        raise ValueError(f"particles must be >= 1, got {particles}")
    if n % particles:
        raise ValueError(f"batch of {n} rows is not a whole number of groups of {particles} particles")
    return n // particles


def _scores(reward: Reward, x: torch.Tensor, groups: int, particles: int) -> torch.Tensor:
    r = torch.as_tensor(reward(x))
    if r.numel() != groups * particles:
        raise ValueError(f"reward returned {tuple(r.shape)} scores for {groups * particles} samples")
    r = r.detach().to(torch.float64).reshape(groups, particles)
    if not torch.isfinite(r).all():
        raise ValueError("reward returned NaN or inf")
    return r


def best_of_n(scores: torch.Tensor, particles: int) -> torch.Tensor:
    """Flat row index (G,) of the highest score in each group of ``particles`` consecutive rows."""
    s = torch.as_tensor(scores).reshape(-1)
    groups = _groups(s.numel(), particles)
    best = s.reshape(groups, particles).argmax(dim=1)
    return torch.arange(groups, device=s.device) * particles + best


def effective_sample_size(log_weights: torch.Tensor) -> torch.Tensor:
    """Kish's ESS ``1 / sum w^2`` of each row of (unnormalized) log weights (G, K)."""
    w = torch.softmax(log_weights, dim=-1)
    return 1.0 / (w * w).sum(dim=-1)


def systematic_resample(log_weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ancestor indices (G, K) within each group: systematic resampling (one uniform per group), which keeps
    every particle whose weight exceeds 1/K and has lower variance than multinomial draws."""
    groups, k = log_weights.shape
    w = torch.softmax(log_weights.to(torch.float64), dim=-1)
    cdf = w.cumsum(dim=-1)
    cdf[:, -1] = 1.0
    u = torch.rand((groups, 1), generator=generator, dtype=torch.float64, device=w.device)
    points = (u + torch.arange(k, dtype=torch.float64, device=w.device)) / k
    return torch.searchsorted(cdf, points).clamp_(max=k - 1)


def select(
    log_weights: torch.Tensor,
    rewards: torch.Tensor,
    how: str = "argmax",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Flat row index (G,) of one particle per group: the highest reward (``argmax``) or one drawn by weight
    (``sample``: a draw from the tilted distribution)."""
    groups, k = log_weights.shape
    if how == "argmax":
        pick = rewards.argmax(dim=1)
    elif how == "sample":
        probs = torch.softmax(log_weights.to(torch.float64), dim=-1)
        pick = torch.multinomial(probs, 1, generator=generator).reshape(-1)
    else:
        raise ValueError(f"selection must be 'argmax' or 'sample', got {how!r}")
    return torch.arange(groups, device=log_weights.device) * k + pick.to(log_weights.device)


def fk_steer(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    reward: Reward,
    *,
    particles: int,
    lam: float = 1.0,
    eta: float = 1.0,
    ess_threshold: float = 0.5,
    generator: torch.Generator | None = None,
    check_finite: bool = True,
) -> SteerResult:
    """Feynman-Kac steering of ``x`` (N = G * K rows at ``sigmas[0]``) down ``sigmas`` (module docstring).

    ``eta`` is the DDIM stochasticity of each step (1: DDPM's ancestral step; 0: the deterministic ODE, where
    resampled duplicates stay identical). ``ess_threshold`` in [0, 1]: resample a group when its ESS drops
    below that fraction of K (1: at every step; 0: never, i.e. importance weighting only).
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor with a leading batch dimension")
    if not 0.0 <= float(ess_threshold) <= 1.0:
        raise ValueError(f"ess_threshold must lie in [0, 1], got {ess_threshold}")
    if float(eta) < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    sig = validate_sigmas(sigmas)
    k = int(particles)
    groups = _groups(x.shape[0], k)
    run = Stepper(denoise, sig, x, generator, None, None, None, check_finite)
    log_w = torch.zeros(groups, k, dtype=torch.float64, device=x.device)
    prev = torch.zeros_like(log_w)
    calls = resamples = 0
    offsets = (torch.arange(groups, device=x.device) * k)[:, None]
    for i in range(len(sig) - 1):
        x0 = run.denoise(x, i)
        r = _scores(reward, x0, groups, k)
        calls += 1
        log_w += lam * (r - prev)
        prev = r
        low = effective_sample_size(log_w) < ess_threshold * k
        if bool(low.any()):
            ancestors = systematic_resample(log_w, generator)
            keep = torch.arange(k, device=x.device).expand(groups, k)
            ancestors = torch.where(low[:, None], ancestors.to(x.device), keep)
            rows = (ancestors + offsets).reshape(-1)
            x, x0 = x[rows], x0[rows]
            prev = torch.gather(prev, 1, ancestors)
            log_w = torch.where(low[:, None], torch.zeros_like(log_w), log_w)
            resamples += int(low.sum())
        x = ancestral_step(x, x0, sig[i], sig[i + 1], float(eta), run.noise)
    if sig[-1] > 0:  # the last state is not the last x0 prediction: score it as well
        r = _scores(reward, x, groups, k)
        calls += 1
        log_w += lam * (r - prev)
        prev = r
    log_w = log_w - torch.logsumexp(log_w, dim=1, keepdim=True)
    return SteerResult(x, log_w, prev, run.nfe, calls, resamples)
