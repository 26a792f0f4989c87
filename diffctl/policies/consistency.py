"""ConsistencyPolicy: a diffusion policy distilled into a consistency model (Consistency Policy).

The student has the teacher's architecture, starts from its weights and uses the consistency
parameterization (``D(x, sigma_min) = x``). Training (consistency distillation) noises a clean chunk to
``s_hi`` on a Karras grid, takes one Heun step of the EDM teacher to the neighbouring ``s_lo`` and regresses
``student(x_hi, s_hi)`` onto an EMA target's ``target(x_lo, s_lo)``. Sampling is one jump from ``sigma_max``
(1 NFE) or 2-3 chained jumps with re-noising in between (the ``consistency`` solver).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from diffctl.kernels import schedules
from diffctl.kernels.denoisers import ConsistencyDenoiser, EDMDenoiser
from diffctl.kernels.losses import consistency_distillation_loss
from diffctl.policies.base import SamplerConfig
from diffctl.policies.diffusion import DiffusionPolicy, split_batch


class RawCondNet(nn.Module):
    """``net(x, c_noise, (obs, goal, keep))``: builds the conditioning with the wrapped network's own encoder,
    so teacher, student and target each use theirs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, raw: tuple[Any, Any, Any]) -> torch.Tensor:
        return self.net(x, c_noise, self.net.condition(*raw))


def merge_signature(init: Callable[..., None], parent: Callable[..., None]) -> None:
    """Give a subclass ``__init__(..., **kwargs)`` the full keyword list of its parent's, so
    ``inspect.signature`` (the train pipeline's key check) sees every accepted argument."""
    own = inspect.signature(init).parameters
    params = [p for p in own.values() if p.kind != p.VAR_KEYWORD]
    extra = [
        p for name, p in inspect.signature(parent).parameters.items()
        if name not in own and p.kind == p.KEYWORD_ONLY
    ]  # fmt: skip
    init.__signature__ = inspect.Signature(params + extra)  # type: ignore[attr-defined]


def consistency_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """Chained-sampling grid: ``steps`` jump points of a Karras grid from sigma_max (no sigma_min), 0."""
    grid = schedules.karras(steps + 1, sigma_min, sigma_max, rho)
    return torch.cat([grid[:-2], grid.new_zeros(1)]).float()


class ConsistencyPolicy(DiffusionPolicy):
    """Consistency-distilled chunk policy. Build with ``from_teacher``; train ``network`` on ``loss``.

    ``distill_steps``: levels of the Karras grid the distillation pairs come from; ``target_ema``: decay of
    the target network, updated from the student at every ``loss`` call with gradients enabled.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        distill_steps: int = 20,
        target_ema: float = 0.95,
        sampler: SamplerConfig | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(distill_steps, int) or distill_steps < 2:
            raise ValueError(f"distill_steps must be an integer >= 2, got {distill_steps!r}")
        if not 0 <= target_ema < 1:
            raise ValueError(f"target_ema must lie in [0, 1), got {target_ema}")
        if kwargs.get("parameterization", "edm") != "edm":
            raise ValueError("ConsistencyPolicy needs parameterization='edm'")
        if sampler is None:
            sampler = {"solver": "consistency", "steps": 1}
        super().__init__(obs_dim, action_dim, sampler=sampler, **kwargs)
        self.hparams.update(distill_steps=distill_steps, target_ema=target_ema)
        self.teacher: DiffusionPolicy | None = None
        self._target: nn.Module | None = None

    @classmethod
    def from_teacher(cls, teacher: DiffusionPolicy, **overrides: Any) -> ConsistencyPolicy:
        """A student with the teacher's architecture, weights and normalizers; ``overrides`` are
        ``distill_steps``, ``target_ema``, ``sampler`` or other constructor arguments."""
        if teacher.parameterization != "edm":
            raise ValueError(f"the teacher must be an EDM DiffusionPolicy, got {teacher.parameterization!r}")
        hp = {k: v for k, v in teacher.hparams.items() if k not in ("distill_steps", "target_ema")}
        hp.update(overrides)
        student = cls(hp.pop("obs_dim"), hp.pop("action_dim"), normalizers=teacher.normalizers, **hp)
        student.network.load_state_dict(teacher.network.state_dict())
        student.teacher = teacher
        return student

    def denoiser(self) -> nn.Module:
        return ConsistencyDenoiser(self.network, self.hparams["sigma_data"], self.sampler.sigma_min)

    def _grid(self, sampler: SamplerConfig | None = None) -> torch.Tensor:
        cfg = sampler or self.sampler
        key = ("consistency_sigmas", cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
        return self._cached(key, lambda: consistency_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho))

    @torch.no_grad()
    def _update_target(self) -> nn.Module:
        if self._target is None:
            self._target = copy.deepcopy(self.network).requires_grad_(False)
        mu = self.hparams["target_ema"]
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
        sd, smin = self.hparams["sigma_data"], self.sampler.sigma_min
        target_net = self._update_target() if torch.is_grad_enabled() else (self._target or self.network)
        tnet = self.teacher.network
        was = tnet.training
        tnet.eval()
        try:
            grid = schedules.karras(
                self.hparams["distill_steps"], smin, self.sampler.sigma_max, self.sampler.rho
            )
            per_sample = consistency_distillation_loss(
                ConsistencyDenoiser(RawCondNet(self.network), sd, smin),
                ConsistencyDenoiser(RawCondNet(target_net), sd, smin),
                EDMDenoiser(RawCondNet(tnet), self.teacher.hparams["sigma_data"]),
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


merge_signature(ConsistencyPolicy.__init__, DiffusionPolicy.__init__)
