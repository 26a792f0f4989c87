"""Coarse-to-fine planning (DiffuserLite, Dong et al. 2024): plan refinement over short trajectories.

Level 0 samples ``points`` states spaced ``(points - 1) ** (levels - 1)`` steps apart, spanning the whole
``horizon``: the current state is inpainted at its first point and, on goal tasks, the goal position at its
last. Each further level fills the gap between the first two points of the level above at ``points - 1``
times finer spacing, with both ends inpainted, until the last level plans ``points`` consecutive
(state, action) steps, which the agent tracks. Every level is a small flattened-trajectory MLP denoiser on
``points x (state + action)`` inputs, so a plan costs ``levels x steps`` evaluations of a tiny network
instead of ``steps`` evaluations of a U-Net over the whole horizon. Only the part of the coarse plan that
is executed next is refined; the rest is discarded, as in DiffuserLite.

Training cuts each level's trajectory out of one window of ``horizon`` steps: level ``l`` reads the entries
``0, s_l, 2 s_l, ...`` (stride ``s_l``) from the window start. With ``value`` (default on tasks without goal)
a value network on the level-0 plan, trained on the window's return-to-go, ranks ``n_plans`` coarse plans
and can steer level 0 up its gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from diffctl.datasets.normalizer import Normalizer
from diffctl.kernels.denoisers import EDMDenoiser
from diffctl.kernels.losses import edm_loss
from diffctl.kernels.samplers import sample
from diffctl.nets import build_backbone
from diffctl.planners.base import Plan, ScaledNoiseNet, check_positive, clean_conditioned
from diffctl.planners.diffuser import TrajectoryPlanner, goal_dims_or_default
from diffctl.planners.value import ValueNet
from diffctl.policies.base import SamplerConfig, eval_mode


def level_strides(points: int, levels: int) -> list[int]:
    """Temporal spacing of each level, coarsest first: ``(points - 1) ** (levels - 1), ..., 1``."""
    return [(points - 1) ** (levels - 1 - level) for level in range(levels)]


class CoarseToFineNet(nn.Module):
    """One EDM denoiser per level and the (optional) value network on the level-0 plan."""

    def __init__(self, denoisers: Sequence[EDMDenoiser], value: ValueNet | None) -> None:
        super().__init__()
        self.denoisers = nn.ModuleList(denoisers)
        self.value = value


class CoarseToFineDiffuser(TrajectoryPlanner):
    """Diffuser with DiffuserLite's plan refinement: ``levels`` plans of ``points`` states, coarse to fine.

    ``horizon`` is the training window and the span of the level-0 plan; it must equal
    ``(points - 1) ** levels + 1`` (e.g. 65 for 9 points x 2 levels or 5 points x 3 levels). The executed plan
    is the finest level's ``points`` steps, so the agent replans at least every ``points - 1`` steps.
    ``backbone_kwargs`` go to each level's ``mlp`` backbone. Tracking is as in ``Diffuser`` (PD on the next
    waypoint for maze-like goal tasks, the planned actions otherwise); warm starts are not supported.
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        goal_dim: int = 0,
        horizon: int = 65,
        points: int = 9,
        levels: int = 2,
        state_dim: int | None = None,
        goal_dims: Sequence[int] | None = None,
        backbone_kwargs: Mapping[str, Any] | None = None,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        value: bool | None = None,
        value_hidden: int = 256,
        value_depth: int = 2,
        value_weight: float = 1.0,
        value_scale: float = 0.0,
        value_sigma_min: float = 0.05,
        discount: float = 0.99,
        n_plans: int = 1,
        replan_every: int = 0,
        replan_threshold: float | None = None,
        tracking: str = "auto",
        kp: float = 1.0,
        kd: float = 1.0,
        seed: int = 0,
        sampler: SamplerConfig | Mapping[str, Any] | None = None,
        normalizers: Mapping[str, Normalizer] | None = None,
    ) -> None:
        name = type(self).__name__
        check_positive(name, points=points, levels=levels)
        if points < 2:
            raise ValueError(f"{name} points must be >= 2, got {points}")
        if horizon != (points - 1) ** levels + 1:
            raise ValueError(
                f"{name} horizon must be (points - 1) ** levels + 1 = {(points - 1) ** levels + 1} for "
                f"points={points}, levels={levels}; got horizon={horizon} (set task.horizon to match)"
            )
        self.points, self.levels = points, levels
        self.strides = level_strides(points, levels)
        self.hparams: dict[str, Any] = {
            "obs_dim": obs_dim, "action_dim": action_dim, "goal_dim": goal_dim, "horizon": horizon,
            "points": points, "levels": levels, "state_dim": state_dim,
            "goal_dims": goal_dims_or_default(goal_dim, goal_dims),
            "backbone_kwargs": dict(backbone_kwargs or {}), "sigma_data": sigma_data, "p_mean": p_mean,
            "p_std": p_std,
            "value": goal_dim == 0 if value is None else bool(value), "value_hidden": value_hidden,
            "value_depth": value_depth, "value_weight": value_weight, "value_scale": value_scale,
            "value_sigma_min": value_sigma_min, "discount": discount, "n_plans": n_plans,
            "replan_every": replan_every, "replan_threshold": replan_threshold, "tracking": tracking,
            "kp": kp, "kd": kd, "seed": seed,
        }  # fmt: skip
        self._setup(sampler, normalizers, self._build_network)

    def _build_network(self) -> CoarseToFineNet:
        hp, dim = self.hparams, self.transition_dim
        dens = [
            EDMDenoiser(ScaledNoiseNet(build_backbone("mlp", dim, self.points, 0, **hp["backbone_kwargs"])),
                        hp["sigma_data"])
            for _ in range(self.levels)
        ]  # fmt: skip
        value = ValueNet(self.points, dim, hp["value_hidden"], hp["value_depth"]) if hp["value"] else None
        return CoarseToFineNet(dens, value)

    @property
    def plan_length(self) -> int:
        return self.points

    # ----- training ------------------------------------------------------------------------------------
    def _end_mask(self, level: int) -> list[int]:
        """State features pinned at a level's last point: the goal on level 0, the whole state below."""
        return list(self.hparams["goal_dims"]) if level == 0 else list(range(self.state_dim))

    def _cond_mask(self, level: int, bsz: int, with_end: bool, device: torch.device) -> torch.Tensor:
        mask = torch.zeros(bsz, self.points, self.transition_dim, dtype=torch.bool, device=device)
        mask[:, 0, : self.state_dim] = True
        if with_end:
            mask[:, -1, self._end_mask(level)] = True
        return mask

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum over levels of the EDM loss on each level's strided cut of the window (+ the value loss)."""
        states, actions, mask = self.windows(batch)
        x_full = torch.cat(
            [self._normalizer("state").normalize(states), self._normalizer("action").normalize(actions)], -1
        )
        hp = self.hparams
        span = self.points - 1
        total = x_full.new_zeros(())
        info: dict[str, float] = {}
        for level, (stride, den) in enumerate(zip(self.strides, self.network.denoisers, strict=True)):
            idx = torch.arange(0, span * stride + 1, stride, device=x_full.device)
            x0, valid = x_full[:, idx], mask[:, idx]
            with_end = level > 0 or bool(self.goal_dim)
            cmask = self._cond_mask(level, x0.shape[0], with_end, x0.device)
            weight = valid[..., None] & ~cmask
            loss = edm_loss(clean_conditioned(den, cmask, x0), x0, None, hp["p_mean"], hp["p_std"],
                            weight_mask=weight).mean()  # fmt: skip
            total = total + loss
            info[f"diffusion_loss/level{level}"] = float(loss.detach())
            if level == 0 and self.network.value is not None:
                target = self.window_returns(batch, mask)
                value_loss = ((self.network.value(x0) - target) ** 2).mean()
                total = total + hp["value_weight"] * value_loss
                info["value_loss"] = float(value_loss.detach())
        info["loss"] = float(total.detach())
        return total, info

    # ----- planning ------------------------------------------------------------------------------------
    def _level(
        self, level: int, start: torch.Tensor, end: torch.Tensor | None, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Sample one level's normalized ``(B, points, D)`` plans from normalized start / end states."""
        bsz, device = start.shape[0], start.device
        known = start.new_zeros(bsz, self.points, self.transition_dim)
        known[:, 0, : self.state_dim] = start
        if end is not None:
            dims = self._end_mask(level)
            known[:, -1, dims] = end[:, dims]
        mask = self._cond_mask(level, bsz, end is not None, device)
        shape = (bsz, self.points, self.transition_dim)
        sigmas = self.sigmas().to(device)
        x = self.start_noise(shape, noise, device) * sigmas[0]
        den = functools.partial(clean_conditioned(self.network.denoisers[level], mask, known), cond=None)
        if level == 0:
            den = self._value_guided(den)
        return sample(den, x, sigmas, solver=self.sampler.solver, generator=self._generator, mask=mask,
                      known=known, **self.sampler.options)  # fmt: skip

    @torch.no_grad()
    def plan(
        self,
        obs: Any,
        goal: Any = None,
        *,
        noise: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
    ) -> Plan:
        """Refine ``n_plans`` coarse plans per observation down to ``points`` consecutive steps; ``values``
        rank the coarse plans. ``noise`` ``(levels, B * n_plans, points, D)`` fixes every level's start."""
        if init is not None:
            raise ValueError(f"{type(self).__name__} does not warm-start; set sampler.warm_start to 0")
        state, g = self.split_obs(obs, goal)
        n, bsz = self.hparams["n_plans"], state.shape[0]
        state = state.repeat_interleave(n, 0)
        end = self._normalized_goal(state, None if g is None else g.repeat_interleave(n, 0))
        start = self._normalizer("state").normalize(state)
        if noise is not None and (noise.ndim != 4 or noise.shape[0] != self.levels):
            raise ValueError(
                f"noise must have shape (levels={self.levels}, B * n_plans, {self.points}, "
                f"{self.transition_dim}), got {tuple(noise.shape)}"
            )
        with eval_mode(self.network):
            coarse = self._level(0, start, end, None if noise is None else noise[0])
            ranked, values = self._rank(coarse, bsz)
            x = ranked.reshape(coarse.shape)
            for level in range(1, self.levels):
                x = self._level(
                    level, start, x[:, 1, : self.state_dim], None if noise is None else noise[level]
                )
        return self._to_plan(x.reshape(bsz, n, self.points, self.transition_dim), values)
