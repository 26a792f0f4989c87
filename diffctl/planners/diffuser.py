"""Diffuser (Janner et al. 2022): diffusion over whole normalized (state, action) trajectories.

The current state is inpainted at step 0 and, for goal-reaching tasks, the goal position at step ``H - 1``
(``sample``'s ``mask`` / ``known``, re-imposed after every solver step). A value network trained on
window returns-to-go ranks the ``n_plans`` samples (``rank_with`` swaps in any verifier of the plan's
actions, e.g. an offline-RL critic) and, with ``value_scale > 0``, steers sampling up its
gradient (``kernels.guidance.GradientGuidance`` on the x0 prediction, off below ``value_sigma_min``).
The denoiser is an EDM model, so any solver and step count of ``SamplerConfig`` works at inference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from diffctl.core.modules import eval_mode
from diffctl.kernels.denoisers import EDMDenoiser
from diffctl.kernels.guidance import GradientGuidance
from diffctl.kernels.losses import edm_loss
from diffctl.kernels.samplers import sample
from diffctl.nets import build_backbone
from diffctl.planners.base import Plan, Planner, PlannerConfig, ScaledNoiseNet, clean_conditioned
from diffctl.planners.value import ValueNet


class DiffuserNet(nn.Module):
    """The trainable parts of a Diffuser: the trajectory denoiser and the (optional) value network."""

    def __init__(self, denoiser: EDMDenoiser, value: ValueNet | None) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.value = value


@dataclass
class TrajectoryPlannerConfig(PlannerConfig):
    """Settings of planners over (state, action) trajectories with an optional value model."""

    section: ClassVar[str] = "TrajectoryPlanner"

    goal_dims: list[int] | None = None
    """State features the goal pins at the last step (None: the first ``goal_dim``, the maze position)."""
    value: bool | None = None
    """Train a return model for guidance and ranking (None: on when the task has no goal)."""
    value_hidden: int = 256
    """Width of the value network."""
    value_depth: int = 2
    """Hidden layers of the value network."""
    value_weight: float = 1.0
    """Weight of the value regression in the training loss."""
    value_scale: float = 0.1
    """Value-gradient guidance scale at sampling (0: rank only)."""
    value_sigma_min: float = 0.05
    """No value guidance below this sigma (the last steps)."""

    def validate(self) -> None:
        super().validate()
        name = self.section
        if self.goal_dims is None:
            self.goal_dims = list(range(self.goal_dim))
        if self.value is None:
            self.value = self.goal_dim == 0
        if len(self.goal_dims) != self.goal_dim:
            raise ValueError(
                f"{name} goal_dims {self.goal_dims} must name goal_dim={self.goal_dim} state features"
            )
        if any(not 0 <= d < int(self.state_dim) for d in self.goal_dims):
            raise ValueError(f"{name} goal_dims {self.goal_dims} out of range for state_dim={self.state_dim}")
        if self.tracking == "inverse_dynamics":
            raise ValueError(f"{name} has no inverse dynamics model; tracking must be auto, plan or pd")


class TrajectoryPlanner(Planner):
    """Shared parts of planners over normalized (state, action) trajectories with an optional value model:
    value guidance and ranking, and waypoint / action tracking."""

    config_class: ClassVar[type[PlannerConfig]] = TrajectoryPlannerConfig
    INFERENCE_KEYS: ClassVar[tuple[str, ...]] = (*Planner.INFERENCE_KEYS, "value_scale", "kp", "kd")

    @property
    def transition_dim(self) -> int:
        return self.state_dim + self.action_dim

    @property
    def uses_returns(self) -> bool:
        return bool(self.hparams["value"])

    def tracking_mode(self) -> str:
        mode = self.hparams["tracking"]
        if mode == "auto":
            return "pd" if self.goal_dim and self.state_dim >= 2 * self.action_dim else "plan"
        return str(mode)

    def _normalized_goal(self, state: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor | None:
        """The raw goal ``(B, Dg)`` as a normalized state ``(B, Ds)`` with only ``goal_dims`` meaningful
        (None without a goal; an error when a goal-conditioned planner gets none)."""
        if goal is None:
            if self.goal_dim:
                raise ValueError(
                    f"goal-conditioned {type(self).__name__} (goal_dim={self.goal_dim}) needs a goal: pass "
                    f"goal= or an observation of {self.obs_dim} features"
                )
            return None
        full = state.new_zeros(state.shape[0], self.state_dim)
        full[:, self.hparams["goal_dims"]] = goal
        return self.normalizer("state").normalize(full)

    def _value_guided(self, denoise: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``denoise`` steered up the value gradient when there is a value model and ``value_scale > 0``."""
        value, hp = self.network.value, self.hparams
        if value is None or hp["value_scale"] <= 0:
            return denoise
        return GradientGuidance(
            denoise, lambda x0, s: value(x0), hp["value_scale"], sigma_min=hp["value_sigma_min"]
        )

    def _rank(
        self, x: torch.Tensor, bsz: int, scores: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B * N, T, D)`` plans -> ``(B, N, T, D)`` best first by ``scores`` ``(B * N,)`` when given, else
        by the value model, and those values ``(B, N)`` in raw units (None without either: sampling order)."""
        n = x.shape[0] // bsz
        if scores is None and self.network.value is not None:
            scores = self.normalizer("returns").unnormalize(self.network.value(x)[:, None])[:, 0]
        values = None if scores is None else scores.reshape(bsz, n)
        x = x.reshape(bsz, n, *x.shape[1:])
        if values is not None:
            order = values.argsort(dim=1, descending=True)
            values = values.gather(1, order)
            x = x.gather(1, order[:, :, None, None].expand_as(x))
        return x, values

    def _raw_actions(self, x: torch.Tensor) -> torch.Tensor:
        """The raw actions of normalized ``(..., T, Ds + Da)`` trajectories (clipped to the data's limits)."""
        act_norm = self.normalizer("action")
        a = x[..., self.state_dim :]
        return act_norm.unnormalize(a.clamp(-1.0, 1.0) if act_norm.mode == "limits" else a)

    def _to_plan(self, x: torch.Tensor, values: torch.Tensor | None) -> Plan:
        """A ``Plan`` in raw units from ranked normalized ``(B, N, T, Ds + Da)`` trajectories and their raw
        values ``(B, N)``."""
        states = self.normalizer("state").unnormalize(x[..., : self.state_dim])
        return Plan(states=states, actions=self._raw_actions(x), values=values, trajectory=x)

    def track_action(self, plan: Plan, plan_norm: torch.Tensor, state: torch.Tensor, t: int) -> np.ndarray:
        if self.tracking_mode() == "pd":
            return self.pd_action(plan, state, t)
        return plan.actions[0, 0, t].cpu().numpy()


@dataclass
class DiffuserConfig(TrajectoryPlannerConfig):
    """Settings of ``Diffuser``."""

    section: ClassVar[str] = "Diffuser"

    backbone: Literal["unet", "dit", "mlp"] = "unet"
    """Denoiser backbone over the (state, action) trajectory."""


class Diffuser(TrajectoryPlanner):
    """Trajectory-diffusion planner: ``fit_normalizers``, train ``network`` on ``loss``, ``plan``/``act``.

    ``value`` (default: on when the task has no goal) adds a return model (needs ``returns`` in
    ``fit_normalizers`` and ``rewards``/``returns`` in batches). ``goal_dims`` are the state features the
    goal pins at the last step (default: the first ``goal_dim``, i.e. the maze position). ``tracking``
    ``auto`` follows the plan's next waypoint with the PD law ``kp dp + kd dv`` on goal tasks whose state is
    ``[position, velocity]`` (as Diffuser does in Maze2D) and executes the planned actions otherwise.
    """

    config_class: ClassVar[type[PlannerConfig]] = DiffuserConfig
    verifier: Callable[[torch.Tensor, torch.Tensor], Any] | None = None

    def rank_with(self, verifier: Callable[[torch.Tensor, torch.Tensor], Any] | None) -> Diffuser:
        """Rank the ``n_plans`` samples by ``verifier(obs, actions) -> (B,)`` instead of the value model
        (None: back to the value model). ``obs`` is the raw observation ``(B, Ds [+ Dg])`` and ``actions`` the
        plan's raw actions ``(B, H, Da)``, the interface of ``diffctl.improve`` verifiers: e.g.
        ``QVerifier(td3bc)`` ranks by an offline-RL critic on the first action. Not saved with the planner."""
        if verifier is not None and not callable(verifier):
            raise ValueError(
                f"rank_with needs a callable verifier(obs, actions), got {type(verifier).__name__}"
            )
        self.verifier = verifier
        return self

    def _verified(self, x0: torch.Tensor, state: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        """Verifier scores ``(B * N,)`` of normalized plans sampled from raw ``state`` (and ``goal``)."""
        assert self.verifier is not None
        obs = state if goal is None else torch.cat([state, goal], -1)
        scores = torch.as_tensor(self.verifier(obs, self._raw_actions(x0)), dtype=torch.float32)
        if scores.shape != (x0.shape[0],):
            raise ValueError(
                f"the verifier returned scores of shape {tuple(scores.shape)}; expected ({x0.shape[0]},)"
            )
        return scores.to(x0.device)

    def build_network(self) -> DiffuserNet:
        hp, dim = self.hparams, self.transition_dim
        net = build_backbone(hp["backbone"], dim, self.horizon, 0, **hp["backbone_kwargs"])
        value = ValueNet(self.horizon, dim, hp["value_hidden"], hp["value_depth"]) if hp["value"] else None
        return DiffuserNet(EDMDenoiser(ScaledNoiseNet(net), hp["sigma_data"]), value)

    # ----- training ------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """EDM denoising loss on normalized (state, action) windows (+ value regression on returns-to-go)."""
        states, actions, mask = self.windows(batch)
        x0 = torch.cat(
            [self.normalizer("state").normalize(states), self.normalizer("action").normalize(actions)], -1
        )
        hp = self.hparams
        goal = x0[:, -1, hp["goal_dims"]] if self.goal_dim else None
        cmask = self._cond_mask(x0.shape[0], goal is not None, x0.device)
        denoiser = clean_conditioned(self.network.denoiser, cmask, x0)
        weight = mask[..., None] & ~cmask
        diff = edm_loss(denoiser, x0, None, hp["p_mean"], hp["p_std"], weight_mask=weight).mean()
        info = {"diffusion_loss": float(diff.detach())}
        loss = diff
        if self.network.value is not None:
            target = self.window_returns(batch, mask)
            value_loss = ((self.network.value(x0) - target) ** 2).mean()
            loss = loss + hp["value_weight"] * value_loss
            info["value_loss"] = float(value_loss.detach())
        info["loss"] = float(loss.detach())
        return loss, info

    # ----- planning ------------------------------------------------------------------------------------
    def _cond_mask(self, bsz: int, with_goal: bool, device: torch.device) -> torch.Tensor:
        mask = torch.zeros(bsz, self.horizon, self.transition_dim, dtype=torch.bool, device=device)
        mask[:, 0, : self.state_dim] = True
        if with_goal:
            mask[:, -1, self.hparams["goal_dims"]] = True
        return mask

    def conditioning(
        self, state: torch.Tensor, goal: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inpainting ``(mask, known)`` ``(B, H, Ds + Da)``: the state at step 0, the goal at H - 1."""
        end = self._normalized_goal(state, goal)
        bsz, ds = state.shape[0], self.state_dim
        known = state.new_zeros(bsz, self.horizon, self.transition_dim)
        known[:, 0, :ds] = self.normalizer("state").normalize(state)
        if end is not None:
            dims = self.hparams["goal_dims"]
            known[:, -1, dims] = end[:, dims]
        return self._cond_mask(bsz, end is not None, state.device), known

    @torch.no_grad()
    def plan(
        self,
        obs: Any,
        goal: Any = None,
        *,
        noise: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
    ) -> Plan:
        """Sample ``n_plans`` trajectories per observation (goal from ``goal`` or the observation), ranked
        by the verifier of ``rank_with`` or else the value model when there is one. ``noise``
        ``(B * n_plans, H, Ds + Da)`` fixes the start; ``init`` (normalized ``(B, H, Ds + Da)``, e.g. the
        shifted previous plan) warm-starts sampling at ``sampler.warm_start``."""
        state, g = self.split_obs(obs, goal)
        n, bsz = self.hparams["n_plans"], state.shape[0]
        state = state.repeat_interleave(n, 0)
        g = None if g is None else g.repeat_interleave(n, 0)
        mask, known = self.conditioning(state, g)
        shape = (bsz * n, self.horizon, self.transition_dim)
        x, sigmas = self._start(shape, noise, init, state.device)
        with eval_mode(self.network):
            denoise = functools.partial(clean_conditioned(self.network.denoiser, mask, known), cond=None)
            x0 = sample(
                self._value_guided(denoise), x, sigmas,
                solver=self.sampler.solver, generator=self._generator, mask=mask, known=known,
                **self.sampler.options,
            )  # fmt: skip
            scores = None if self.verifier is None else self._verified(x0, state, g)
            ranked, values = self._rank(x0, bsz, scores)
        return self._to_plan(ranked, values)
