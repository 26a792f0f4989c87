"""``SamplerConfig``: how an agent samples at inference; every field can change at load time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from diffctl.core.config import Config
from diffctl.kernels.samplers import SOLVERS


@dataclass
class SamplerConfig(Config):
    """How an agent samples at inference; any field can be overridden at load time without retraining."""

    section: ClassVar[str] = "sampler"

    solver: str = "dpmpp_2m"
    """One of ``diffctl.kernels.SOLVERS`` (euler, ddim, ddpm, heun, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde,
    consistency)."""
    steps: int = 10
    """Denoising steps of the grid (NFE for first-order solvers)."""
    schedule: Literal["auto", "karras", "vp"] = "auto"
    """Sigma grid: the model's own (Karras for EDM, its training timesteps for VP), or forced."""
    sigma_min: float = 0.002
    """Smallest non-zero sigma of a Karras grid."""
    sigma_max: float = 80.0
    """Largest sigma of a Karras grid (where sampling starts)."""
    rho: float = 7.0
    """Karras grid curvature."""
    guidance_scale: float = 1.0
    """Classifier-free guidance on the goal: 1 plain conditional, 0 goal-free, > 1 extrapolates (2 NFE)."""
    warm_start: float = 0.0
    """> 0: re-noise the previous chunk (shifted by the executed actions) to this sigma and sample the rest
    of the grid only."""
    seed: int | None = None
    """Seed of the sampling generator, so ``act`` is reproducible from ``reset`` (None: global RNG)."""
    spacing: Literal["leading", "trailing", "linspace"] = "leading"
    """How VP timesteps are picked from the training schedule (diffusers' names)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra solver options, e.g. ``eta`` for ddim."""
    fused: bool = False
    """Run deterministic sampling as one frozen TorchScript graph per input shape (faster at batch 1);
    stochastic solvers are refused."""

    def validate(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown sampler.solver {self.solver!r}; expected one of {sorted(SOLVERS)}")
        if self.steps < 1:
            raise ValueError(f"sampler.steps must be a positive integer, got {self.steps!r}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"sampler needs 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}"
            )
        if self.warm_start < 0:
            raise ValueError(f"sampler.warm_start must be >= 0 (a sigma), got {self.warm_start}")


def refuse_fused(sampler: Any, owner: str) -> None:
    """ValueError when ``sampler.fused`` is set on an agent that does not fuse its sampling (it would be
    ignored)."""
    if getattr(sampler, "fused", False):
        raise ValueError(
            f"sampler fused=True is not supported by {owner}: fused sampling covers chunk policies "
            "(DiffusionPolicy, FlowPolicy, ConsistencyPolicy) and StreamingDiffusionPolicy ticks"
        )
