"""Decision Diffuser (Ajay et al. 2023): diffusion over state sequences, actions from inverse dynamics.

Plans are conditioned on a target return (locomotion) or a goal (mazes) through classifier-free guidance:
the condition is dropped with probability ``cond_dropout`` in training and weighted by
``sampler.guidance_scale`` at inference (optionally switched off per sample by
``kernels.guidance.AdaptiveGuidance``). The current state is inpainted at step 0. ``act`` asks the
inverse-dynamics model for the action that moves the observed state to the plan's next state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from diffctl.core.modules import eval_mode
from diffctl.kernels.denoisers import EDMDenoiser
from diffctl.kernels.guidance import AdaptiveGuidance, ClassifierFreeGuidance
from diffctl.kernels.losses import edm_loss
from diffctl.kernels.samplers import sample
from diffctl.nets import build_backbone
from diffctl.planners.base import Plan, Planner, PlannerConfig, ScaledNoiseNet, clean_conditioned
from diffctl.planners.inverse_dynamics import InverseDynamics


class DecisionDiffuserNet(nn.Module):
    """The trainable parts: the state-sequence denoiser and the inverse-dynamics model."""

    def __init__(self, denoiser: EDMDenoiser, inverse_dynamics: InverseDynamics) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.inverse_dynamics = inverse_dynamics


@dataclass
class DecisionDiffuserConfig(PlannerConfig):
    """Settings of ``DecisionDiffuser``."""

    section: ClassVar[str] = "DecisionDiffuser"

    condition: Literal["auto", "return", "goal", "none"] = "auto"
    """What classifier-free guidance conditions on (``auto``: the goal when the task has one, else the
    return)."""
    backbone: Literal["unet", "dit", "mlp"] = "unet"
    """Denoiser backbone over the state sequence."""
    cond_dropout: float = 0.25
    """Probability of dropping the condition in training."""
    target_return: float = 1.0
    """Normalized return asked for at inference (1 = the best return-to-go in the data)."""
    inverse_hidden: int = 256
    """Width of the inverse-dynamics MLP."""
    inverse_depth: int = 2
    """Hidden layers of the inverse-dynamics MLP."""
    inverse_weight: float = 1.0
    """Weight of the inverse-dynamics loss."""
    adaptive_stop_fraction: float | None = None
    """Adaptive guidance: stop guiding after this fraction of the steps."""
    adaptive_cos_threshold: float | None = None
    """Adaptive guidance: stop guiding once conditional and unconditional predictions agree this well."""
    replan_every: int = 1

    def validate(self) -> None:
        super().validate()
        if self.condition == "auto":
            self.condition = "goal" if self.goal_dim else "return"
        if self.condition == "goal" and not self.goal_dim:
            raise ValueError("DecisionDiffuser condition 'goal' needs goal_dim > 0")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"DecisionDiffuser cond_dropout must be in [0, 1), got {self.cond_dropout}")


class DecisionDiffuser(Planner):
    """State-only diffusion planner with classifier-free return/goal guidance and inverse dynamics.

    ``condition``: ``return`` (needs returns in ``fit_normalizers`` and batches), ``goal`` or ``none``;
    ``auto`` picks ``goal`` when ``goal_dim > 0``, else ``return``. ``target_return`` is the normalized
    return asked for at inference (1 = the best return-to-go in the data). ``adaptive_stop_fraction`` /
    ``adaptive_cos_threshold`` turn on adaptive guidance. ``tracking`` ``auto`` means inverse dynamics.
    """

    config_class: ClassVar[type[PlannerConfig]] = DecisionDiffuserConfig
    INFERENCE_KEYS: ClassVar[tuple[str, ...]] = (
        *Planner.INFERENCE_KEYS, "target_return", "adaptive_stop_fraction", "adaptive_cos_threshold",
        "kp", "kd",
    )  # fmt: skip

    @property
    def cond_dim(self) -> int:
        """Width of the guidance condition: the goal, one return, or nothing."""
        return {"goal": self.goal_dim, "return": 1, "none": 0}[self.config.condition]

    def build_network(self) -> nn.Module:
        cfg = self.config
        film = self.cond_dim + 1 if self.cond_dim else 0
        net = build_backbone(cfg.backbone, self.state_dim, self.horizon, film, **cfg.backbone_kwargs)
        inv = InverseDynamics(self.state_dim, self.action_dim, cfg.inverse_hidden, cfg.inverse_depth)
        return DecisionDiffuserNet(EDMDenoiser(ScaledNoiseNet(net), cfg.sigma_data), inv)

    @property
    def uses_returns(self) -> bool:
        return self.hparams["condition"] == "return"

    def tracking_mode(self) -> str:
        mode = self.hparams["tracking"]
        return "inverse_dynamics" if mode == "auto" else str(mode)

    def _cond(self, value: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
        """``[value * keep, keep]`` (``keep`` 1 = conditioned, 0 = dropped); None without conditioning."""
        if not self.cond_dim:
            return None
        k = keep.to(torch.float32).reshape(-1, 1)
        v = torch.zeros(k.shape[0], self.cond_dim, device=k.device) if value is None else value
        return torch.cat([v * k, k], dim=-1)

    # ----- training ------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """EDM loss on normalized state windows with condition dropout + inverse-dynamics regression."""
        states, actions, mask = self.windows(batch)
        x0 = self.normalizer("state").normalize(states)
        bsz = x0.shape[0]
        value = None
        if self.hparams["condition"] == "return":
            value = self.window_returns(batch, mask)[:, None]
        elif self.hparams["condition"] == "goal":
            if "goal" not in batch:
                raise ValueError("goal-conditioned DecisionDiffuser needs batch key 'goal'")
            value = self.normalizer("goal").normalize(
                torch.as_tensor(batch["goal"]).to(x0.device, torch.float32)
            )
        keep = torch.rand(bsz, device=x0.device) >= self.hparams["cond_dropout"]
        cond = self._cond(value, keep)
        hp = self.hparams
        cmask = torch.zeros_like(x0, dtype=torch.bool)
        cmask[:, 0] = True
        denoiser = clean_conditioned(self.network.denoiser, cmask, x0)
        weight = mask[..., None] & ~cmask
        diff = edm_loss(denoiser, x0, cond, hp["p_mean"], hp["p_std"], weight_mask=weight)
        diff = diff.mean()
        inv = self.network.inverse_dynamics.loss(x0, self.normalizer("action").normalize(actions), mask)
        loss = diff + hp["inverse_weight"] * inv
        return loss, {"loss": float(loss.detach()), "diffusion_loss": float(diff.detach()),
                      "inverse_loss": float(inv.detach())}  # fmt: skip

    # ----- planning ------------------------------------------------------------------------------------
    def _guided(self, cond: torch.Tensor | None, uncond: torch.Tensor | None, sigmas: torch.Tensor) -> Any:
        model = self.network.denoiser
        hp, scale = self.hparams, self.sampler.guidance_scale
        if cond is None:
            return lambda x, s: model(x, s, None)
        if hp["adaptive_stop_fraction"] is not None or hp["adaptive_cos_threshold"] is not None:
            return AdaptiveGuidance(
                model, cond, uncond, scale, sigmas=sigmas, stop_fraction=hp["adaptive_stop_fraction"],
                cos_threshold=hp["adaptive_cos_threshold"],
            )  # fmt: skip
        return ClassifierFreeGuidance(model, cond, uncond, scale)

    @torch.no_grad()
    def plan(
        self,
        obs: Any,
        goal: Any = None,
        *,
        noise: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
    ) -> Plan:
        """Sample ``n_plans`` state sequences per observation under the return/goal condition; actions come
        from inverse dynamics between consecutive planned states. ``noise`` ``(B * n_plans, H, Ds)``;
        ``init`` (normalized ``(B, H, Ds)``) warm-starts sampling at ``sampler.warm_start``."""
        state, g = self.split_obs(obs, goal)
        n, bsz = self.hparams["n_plans"], state.shape[0]
        s = self.normalizer("state").normalize(state).repeat_interleave(n, 0)
        rows = bsz * n
        value = None
        if self.hparams["condition"] == "return":
            value = torch.full((rows, 1), float(self.hparams["target_return"]), device=s.device)
        elif self.hparams["condition"] == "goal" and g is not None:
            value = self.normalizer("goal").normalize(g).repeat_interleave(n, 0)
        ones = torch.ones(rows, device=s.device)
        cond = self._cond(value, ones if value is not None else ones * 0)
        uncond = self._cond(None, ones * 0)
        shape = (rows, self.horizon, self.state_dim)
        x, sigmas = self._start(shape, noise, init, s.device)
        known = torch.zeros(shape, device=s.device)
        known[:, 0] = s
        mask = torch.zeros(shape, dtype=torch.bool, device=s.device)
        mask[:, 0] = True
        guided = self._guided(cond, uncond, sigmas)
        with eval_mode(self.network):
            x0 = sample(
                lambda x, sig: guided(torch.where(mask, known, x), sig),
                x, sigmas,
                solver=self.sampler.solver, generator=self._generator, mask=mask, known=known,
                **self.sampler.options,
            )  # fmt: skip
            a = self.network.inverse_dynamics(x0[:, :-1], x0[:, 1:])
        states = self.normalizer("state").unnormalize(x0).reshape(bsz, n, self.horizon, self.state_dim)
        actions = self.normalizer("action").unnormalize(a).reshape(bsz, n, self.horizon - 1, self.action_dim)
        traj = x0.reshape(bsz, n, self.horizon, self.state_dim)
        return Plan(states=states, actions=actions, values=None, trajectory=traj)

    def track_action(self, plan: Plan, plan_norm: torch.Tensor, state: torch.Tensor, t: int) -> np.ndarray:
        mode = self.tracking_mode()
        if mode == "pd":
            return self.pd_action(plan, state, t)
        if mode == "plan":
            return plan.actions[0, 0, min(t, self.horizon - 2)].cpu().numpy()
        s = self.normalizer("state").normalize(state)
        nxt = plan_norm[min(t + 1, self.horizon - 1)][None]
        with torch.no_grad():
            a = self.network.inverse_dynamics(s, nxt)
        return self.normalizer("action").unnormalize(a)[0].cpu().numpy()
