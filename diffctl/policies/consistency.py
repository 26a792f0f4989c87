"""ConsistencyPolicy: a diffusion policy distilled into a consistency model (Consistency Policy).

The student has the teacher's architecture, starts from its weights and uses the consistency
parameterization (``D(x, sigma_min) = x``). Training (consistency distillation) noises a clean chunk to
``s_hi`` on a Karras grid, takes one Heun step of the EDM teacher to the neighbouring ``s_lo`` and regresses
``student(x_hi, s_hi)`` onto an EMA target's ``target(x_lo, s_lo)``. Sampling is one jump from ``sigma_max``
(1 NFE) or 2-3 chained jumps with re-noising in between (the ``consistency`` solver).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from diffctl.kernels import schedules
from diffctl.kernels.denoisers import ConsistencyDenoiser, EDMDenoiser
from diffctl.kernels.losses import consistency_distillation_loss
from diffctl.policies.base import SamplerConfig
from diffctl.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig, split_batch


class RawCondNet(nn.Module):
    """``net(x, c_noise, (obs, goal, keep))``: builds the conditioning with the wrapped network's own encoder,
    so teacher, student and target each use theirs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, raw: tuple[Any, Any, Any]) -> torch.Tensor:
        return self.net(x, c_noise, self.net.condition(*raw))


def consistency_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """Chained-sampling grid: ``steps`` jump points of a Karras grid from sigma_max (no sigma_min), 0."""
    grid = schedules.karras(steps + 1, sigma_min, sigma_max, rho)
    return torch.cat([grid[:-2], grid.new_zeros(1)]).float()


@dataclass
class ConsistencyPolicyConfig(DiffusionPolicyConfig):
    """Settings of a ``ConsistencyPolicy``: the teacher's architecture plus the distillation settings."""

    section: ClassVar[str] = "ConsistencyPolicy"

    distill_steps: int = 20
    """Levels of the Karras grid the distillation pairs come from."""
    target_ema: float = 0.95
    """Decay of the target network, updated from the student at every training ``loss`` call."""

    def validate(self) -> None:
        super().validate()
        if self.distill_steps < 2:
            raise ValueError(f"distill_steps must be an integer >= 2, got {self.distill_steps!r}")
        if not 0 <= self.target_ema < 1:
            raise ValueError(f"target_ema must lie in [0, 1), got {self.target_ema}")
        if self.parameterization != "edm":
            raise ValueError("ConsistencyPolicy needs parameterization='edm'")


class ConsistencyPolicy(DiffusionPolicy):
    """Consistency-distilled chunk policy. Build with ``from_teacher``; train ``network`` on ``loss``."""

    config_class: ClassVar[type[DiffusionPolicyConfig]] = ConsistencyPolicyConfig
    default_sampler: ClassVar[dict[str, Any]] = {"solver": "consistency", "steps": 1}

    def __init__(self, obs_dim: int, action_dim: int, **settings: Any) -> None:
        super().__init__(obs_dim, action_dim, **settings)
        self.teacher: DiffusionPolicy | None = None
        self._target: nn.Module | None = None

    @classmethod
    def from_teacher(cls, teacher: DiffusionPolicy, **overrides: Any) -> ConsistencyPolicy:
        """A student with the teacher's architecture, weights and normalizers; ``overrides`` are
        ``distill_steps``, ``target_ema``, ``sampler`` or other constructor arguments."""
        if teacher.parameterization != "edm":
            raise ValueError(f"the teacher must be an EDM DiffusionPolicy, got {teacher.parameterization!r}")
        hp = {k: v for k, v in teacher.config.to_dict().items() if k not in ("distill_steps", "target_ema")}
        hp.update(overrides)
        student = cls(hp.pop("obs_dim"), hp.pop("action_dim"), normalizers=teacher.normalizers, **hp)
        student.network.load_state_dict(teacher.network.state_dict())
        student.teacher = teacher
        return student

    def denoiser(self) -> nn.Module:
        return ConsistencyDenoiser(self.network, self.config.sigma_data, self.sampler.sigma_min)

    def grid(self, sampler: SamplerConfig | None = None) -> torch.Tensor:
        cfg = sampler or self.sampler
        key = ("consistency_sigmas", cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
        return self._cached(key, lambda: consistency_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho))

    @torch.no_grad()
    def _update_target(self) -> nn.Module:
        if self._target is None:
            self._target = copy.deepcopy(self.network).requires_grad_(False)
        mu = self.config.target_ema
        for t, s in zip(self._target.parameters(), self.network.parameters(), strict=True):
            t.lerp_(s.detach().to(t.device), 1 - mu)
        self._target.to(next(self.network.parameters()).device)
        return self._target

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Consistency distillation loss of a raw batch against ``self.teacher``."""
        if self.teacher is None:
            raise ValueError(
                "ConsistencyPolicy.loss needs a teacher: build it with ConsistencyPolicy.from_teacher"
            )
        a, raw, mask = split_batch(self, batch)
        sd, smin = self.config.sigma_data, self.sampler.sigma_min
        target_net = self._update_target() if torch.is_grad_enabled() else (self._target or self.network)
        tnet = self.teacher.network
        was = tnet.training
        tnet.eval()
        try:
            grid = schedules.karras(self.config.distill_steps, smin, self.sampler.sigma_max, self.sampler.rho)
            per_sample = consistency_distillation_loss(
                ConsistencyDenoiser(RawCondNet(self.network), sd, smin),
                ConsistencyDenoiser(RawCondNet(target_net), sd, smin),
                EDMDenoiser(RawCondNet(tnet), self.teacher.config.sigma_data),
                a, grid.to(a.device), cond=raw, weight_mask=mask,
            )  # fmt: skip
        finally:
            tnet.train(was)
        loss = per_sample.mean()
        return loss, {"loss": float(loss.detach())}

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["teacher"] = None
        state["_target"] = None
        return state
