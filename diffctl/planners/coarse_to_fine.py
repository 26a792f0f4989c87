"""Coarse-to-fine planning (DiffuserLite, Dong et al. 2024): plan refinement over short trajectories.

Level 0 samples ``points`` states spaced ``(points - 1) ** (levels - 1)`` steps apart, spanning the whole
``horizon``: the current state is inpainted at its first point and, on goal tasks, the goal position at its
last. Each further level fills the gap between the first two points of the level above at ``points - 1``
times finer spacing, with both ends inpainted, until the last level plans ``points`` consecutive
(state, action) steps, which the agent tracks. Every level is a small denoiser (a flattened-trajectory MLP
or a DiT) on ``points x (state + action)`` inputs, so a plan costs ``levels x steps`` evaluations of a small
network instead of ``steps`` evaluations of a U-Net over the whole horizon. Only the part of the coarse plan
that is executed next is refined. With ``keep_coarse`` (goal tasks) the coarse plans are kept and the next
replan refines their next gap; otherwise each replan samples every level afresh, as DiffuserLite does.

Training cuts each level's trajectory out of one window of ``horizon`` steps: level ``l`` reads the entries
``0, s_l, 2 s_l, ...`` (stride ``s_l``) from the window start. With ``value`` (default on tasks without goal)
a value network on the level-0 plan, trained on the window's return-to-go, ranks ``n_plans`` coarse plans
and can steer level 0 up its gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from diffctl.core.modules import eval_mode
from diffctl.kernels.denoisers import EDMDenoiser
from diffctl.kernels.losses import edm_loss
from diffctl.kernels.samplers import sample
from diffctl.nets import build_backbone
from diffctl.planners.base import Plan, PlannerConfig, ScaledNoiseNet, clean_conditioned
from diffctl.planners.diffuser import TrajectoryPlanner, TrajectoryPlannerConfig
from diffctl.planners.value import ValueNet


def level_strides(points: int, levels: int) -> list[int]:
    """Temporal spacing of each level, coarsest first: ``(points - 1) ** (levels - 1), ..., 1``."""
    return [(points - 1) ** (levels - 1 - level) for level in range(levels)]


class CoarseToFineNet(nn.Module):
    """One EDM denoiser per level and the (optional) value network on the level-0 plan."""

    def __init__(self, denoisers: Sequence[EDMDenoiser], value: ValueNet | None) -> None:
        super().__init__()
        self.denoisers = nn.ModuleList(denoisers)
        self.value = value


@dataclass
class CoarseToFineConfig(TrajectoryPlannerConfig):
    """Settings of ``CoarseToFineDiffuser``: ``levels`` plans of ``points`` states, coarse to fine."""

    section: ClassVar[str] = "CoarseToFineDiffuser"

    horizon: int = 65
    points: int = 9
    """States per level's plan."""
    levels: int = 2
    """Refinement levels; ``horizon`` must be ``(points - 1) ** levels + 1``."""
    keep_coarse: bool | None = None
    """Sample the coarser levels once per approach and refine their next gap at each replan (Diffuser's
    plan-once, which keeps the goal's arrival time fixed), instead of sampling every level afresh at each
    replan, which asks again to arrive a whole horizon later (None: on for goal tasks)."""
    backbone: Literal["mlp", "dit"] = "mlp"
    """Each level's denoiser over its ``points`` steps: a flattened-trajectory MLP (cheapest) or a DiT
    (DiffuserLite's choice; worth its cost when long-range plans must respect obstacles)."""
    value_scale: float = 0.0

    def validate(self) -> None:
        name = self.section
        if self.points < 2:
            raise ValueError(f"{name} points must be >= 2, got {self.points}")
        if self.levels < 1:
            raise ValueError(f"{name} levels must be a positive integer, got {self.levels}")
        span = (self.points - 1) ** self.levels + 1
        if self.horizon != span:
            raise ValueError(
                f"{name} horizon must be (points - 1) ** levels + 1 = {span} for points={self.points}, "
                f"levels={self.levels}; got horizon={self.horizon} (set task.horizon to match)"
            )
        super().validate()
        if self.keep_coarse is None:
            self.keep_coarse = self.goal_dim > 0


@dataclass
class CoarsePlans:
    """The coarser levels' normalized plans ``(B * n_plans, points, D)``, levels ``0 .. levels - 2``, with the
    gap of each being refined below it, and the level-0 values: what ``keep_coarse`` replans continue."""

    plans: list[torch.Tensor]
    gaps: list[int]
    values: torch.Tensor | None

    def advance(self, points: int) -> int | None:
        """Move to the next gap at the finest level that has one (resetting those below); the level whose
        gap moved, or None when every kept plan is used up."""
        for level in range(len(self.gaps) - 1, -1, -1):
            if self.gaps[level] + 1 < points - 1:
                self.gaps[level] += 1
                return level
        return None


class CoarseToFineDiffuser(TrajectoryPlanner):
    """Diffuser with DiffuserLite's plan refinement: ``levels`` plans of ``points`` states, coarse to fine.

    ``horizon`` is the training window and the span of the level-0 plan; it must equal
    ``(points - 1) ** levels + 1`` (e.g. 65 for 9 points x 2 levels or 5 points x 3 levels). The executed plan
    is the finest level's ``points`` steps, so the agent replans at least every ``points - 1`` steps.
    ``backbone_kwargs`` go to each level's backbone (``mlp`` or ``dit``). Tracking is as in ``Diffuser`` (PD
    on the next waypoint for maze-like goal tasks, the planned actions otherwise); warm starts are not
    supported.
    """

    config_class: ClassVar[type[PlannerConfig]] = CoarseToFineConfig
    INFERENCE_KEYS: ClassVar[tuple[str, ...]] = (*TrajectoryPlanner.INFERENCE_KEYS, "keep_coarse")

    @property
    def points(self) -> int:
        return self.config.points

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def strides(self) -> list[int]:
        """Step between consecutive points of each level's plan, coarsest first."""
        return level_strides(self.points, self.levels)

    def build_network(self) -> CoarseToFineNet:
        hp, dim = self.hparams, self.transition_dim
        dens = [
            EDMDenoiser(
                ScaledNoiseNet(build_backbone(hp["backbone"], dim, self.points, 0, **hp["backbone_kwargs"])),
                hp["sigma_data"],
            )
            for _ in range(self.levels)
        ]
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
            [self.normalizer("state").normalize(states), self.normalizer("action").normalize(actions)], -1
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

    def plan_options(self, previous: Plan | None) -> dict[str, Any]:
        if not self.hparams["keep_coarse"] or previous is None:
            return {}
        return {"context": previous.context}

    @torch.no_grad()
    def plan(
        self,
        obs: Any,
        goal: Any = None,
        *,
        noise: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
        context: CoarsePlans | None = None,
    ) -> Plan:
        """Refine ``n_plans`` coarse plans per observation down to ``points`` consecutive steps; ``values``
        rank the coarse plans. ``noise`` ``(levels, B * n_plans, points, D)`` fixes every level's start.
        ``context`` (a previous plan's ``context``) continues its kept coarse plans: the next gap is refined
        from the current state; when they are used up, every level is sampled afresh."""
        if init is not None:
            raise ValueError(f"{type(self).__name__} does not warm-start; set sampler.warm_start to 0")
        state, g = self.split_obs(obs, goal)
        n, bsz = self.hparams["n_plans"], state.shape[0]
        state = state.repeat_interleave(n, 0)
        start = self.normalizer("state").normalize(state)
        if noise is not None and (noise.ndim != 4 or noise.shape[0] != self.levels):
            raise ValueError(
                f"noise must have shape (levels={self.levels}, B * n_plans, {self.points}, "
                f"{self.transition_dim}), got {tuple(noise.shape)}"
            )
        if context is not None:
            context = CoarsePlans(list(context.plans), list(context.gaps), context.values)
            if context.plans and context.plans[0].shape[0] != start.shape[0]:
                raise ValueError(
                    f"context holds {context.plans[0].shape[0]} plans; this call plans {start.shape[0]}"
                )
        moved = None if context is None else context.advance(self.points)
        with eval_mode(self.network):
            if moved is None:
                end = self._normalized_goal(state, None if g is None else g.repeat_interleave(n, 0))
                coarse = self._level(0, start, end, None if noise is None else noise[0])
                ranked, values = self._rank(coarse, bsz)
                context = CoarsePlans([ranked.reshape(coarse.shape)], [0], values)
                moved = 0
            assert context is not None
            del context.plans[moved + 1 :], context.gaps[moved + 1 :]
            x = context.plans[moved]
            for level in range(moved + 1, self.levels):
                end = x[:, context.gaps[level - 1] + 1, : self.state_dim]
                x = self._level(level, start, end, None if noise is None else noise[level])
                if level < self.levels - 1:
                    context.plans.append(x)
                    context.gaps.append(0)
        plan = self._to_plan(x.reshape(bsz, n, self.points, self.transition_dim), context.values)
        plan.context = context if self.levels > 1 else None  # one level has no coarser plan to keep
        return plan
