"""Decision Diffuser (Ajay et al. 2023): diffusion over state sequences, actions from inverse dynamics.

Plans are conditioned on a target return (locomotion) or a goal (mazes) through classifier-free guidance:
the condition is dropped with probability ``cond_dropout`` in training and weighted by
``sampler.guidance_scale`` at inference (optionally switched off per sample by
``kernels.guidance.AdaptiveGuidance``). The current state is inpainted at step 0. ``act`` asks the
inverse-dynamics model for the action that moves the observed state to the plan's next state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from diffctl.datasets.normalizer import Normalizer
from diffctl.kernels.denoisers import EDMDenoiser
from diffctl.kernels.guidance import AdaptiveGuidance, ClassifierFreeGuidance
from diffctl.kernels.losses import edm_loss
from diffctl.kernels.samplers import sample
from diffctl.nets import build_backbone
from diffctl.planners.base import Plan, Planner, ScaledNoiseNet, clean_conditioned
from diffctl.planners.inverse_dynamics import InverseDynamics
from diffctl.policies.base import SamplerConfig, eval_mode

CONDITIONS = ("auto", "return", "goal", "none")


class DecisionDiffuserNet(nn.Module):
    """The trainable parts: the state-sequence denoiser and the inverse-dynamics model."""

    def __init__(self, denoiser: EDMDenoiser, inverse_dynamics: InverseDynamics) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.inverse_dynamics = inverse_dynamics


class DecisionDiffuser(Planner):
    """State-only diffusion planner with classifier-free return/goal guidance and inverse dynamics.

    ``condition``: ``return`` (needs returns in ``fit_normalizers`` and batches), ``goal`` or ``none``;
    ``auto`` picks ``goal`` when ``goal_dim > 0``, else ``return``. ``target_return`` is the normalized
    return asked for at inference (1 = the best return-to-go in the data). ``adaptive_stop_fraction`` /
    ``adaptive_cos_threshold`` turn on adaptive guidance. ``tracking`` ``auto`` means inverse dynamics.
    """

    INFERENCE_KEYS: ClassVar[tuple[str, ...]] = (
        *Planner.INFERENCE_KEYS, "target_return", "adaptive_stop_fraction", "adaptive_cos_threshold",
        "kp", "kd",
    )  # fmt: skip

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        goal_dim: int = 0,
        horizon: int = 64,
        state_dim: int | None = None,
        condition: str = "auto",
        backbone: str = "unet",
        backbone_kwargs: Mapping[str, Any] | None = None,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        cond_dropout: float = 0.25,
        target_return: float = 1.0,
        discount: float = 0.99,
        inverse_hidden: int = 256,
        inverse_depth: int = 2,
        inverse_weight: float = 1.0,
        adaptive_stop_fraction: float | None = None,
        adaptive_cos_threshold: float | None = None,
        n_plans: int = 1,
        replan_every: int = 1,
        replan_threshold: float | None = None,
        tracking: str = "auto",
        kp: float = 1.0,
        kd: float = 1.0,
        seed: int = 0,
        sampler: SamplerConfig | Mapping[str, Any] | None = None,
        normalizers: Mapping[str, Normalizer] | None = None,
    ) -> None:
        if condition not in CONDITIONS:
            raise ValueError(f"DecisionDiffuser condition must be one of {CONDITIONS}, got {condition!r}")
        resolved = ("goal" if goal_dim else "return") if condition == "auto" else condition
        if resolved == "goal" and not goal_dim:
            raise ValueError("DecisionDiffuser condition 'goal' needs goal_dim > 0")
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"DecisionDiffuser cond_dropout must be in [0, 1), got {cond_dropout}")
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"DecisionDiffuser discount must be in [0, 1], got {discount}")
        self.hparams: dict[str, Any] = {
            "obs_dim": obs_dim, "action_dim": action_dim, "goal_dim": goal_dim, "horizon": horizon,
            "state_dim": state_dim, "condition": resolved, "backbone": backbone,
            "backbone_kwargs": dict(backbone_kwargs or {}), "sigma_data": sigma_data, "p_mean": p_mean,
            "p_std": p_std, "cond_dropout": cond_dropout, "target_return": target_return,
            "discount": discount, "inverse_hidden": inverse_hidden, "inverse_depth": inverse_depth,
            "inverse_weight": inverse_weight, "adaptive_stop_fraction": adaptive_stop_fraction,
            "adaptive_cos_threshold": adaptive_cos_threshold, "n_plans": n_plans,
            "replan_every": replan_every, "replan_threshold": replan_threshold, "tracking": tracking,
            "kp": kp, "kd": kd, "seed": seed,
        }  # fmt: skip
        self._init_common(obs_dim, action_dim, goal_dim, horizon, state_dim, sampler, normalizers)
        self.cond_dim = {"goal": goal_dim, "return": 1, "none": 0}[resolved]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            film = self.cond_dim + 1 if self.cond_dim else 0
            net = build_backbone(backbone, self.state_dim, horizon, film, **self.hparams["backbone_kwargs"])
            inv = InverseDynamics(self.state_dim, action_dim, inverse_hidden, inverse_depth)
        self.network: nn.Module = DecisionDiffuserNet(EDMDenoiser(ScaledNoiseNet(net), sigma_data), inv)
        if self.tracking_mode() == "pd" and self.state_dim < 2 * action_dim:
            raise ValueError(f"tracking 'pd' needs state_dim >= 2 * action_dim = {2 * action_dim}")

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
        x0 = self._normalizer("state").normalize(states)
        bsz = x0.shape[0]
        value = None
        if self.hparams["condition"] == "return":
            value = self.window_returns(batch, mask)[:, None]
        elif self.hparams["condition"] == "goal":
            if "goal" not in batch:
                raise ValueError("goal-conditioned DecisionDiffuser needs batch key 'goal'")
            value = self._normalizer("goal").normalize(
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
        inv = self.network.inverse_dynamics.loss(x0, self._normalizer("action").normalize(actions), mask)
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
        s = self._normalizer("state").normalize(state).repeat_interleave(n, 0)
        rows = bsz * n
        value = None
        if self.hparams["condition"] == "return":
            value = torch.full((rows, 1), float(self.hparams["target_return"]), device=s.device)
        elif self.hparams["condition"] == "goal" and g is not None:
            value = self._normalizer("goal").normalize(g).repeat_interleave(n, 0)
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
        states = self._normalizer("state").unnormalize(x0).reshape(bsz, n, self.horizon, self.state_dim)
        actions = self._normalizer("action").unnormalize(a).reshape(bsz, n, self.horizon - 1, self.action_dim)
        traj = x0.reshape(bsz, n, self.horizon, self.state_dim)
        return Plan(states=states, actions=actions, values=None, trajectory=traj)

    def _track_action(self, state: torch.Tensor, t: int) -> np.ndarray:
        assert self._plan is not None and self._plan_norm is not None
        mode = self.tracking_mode()
        if mode == "pd":
            return self._pd_action(state, t)
        if mode == "plan":
            return self._plan.actions[0, 0, min(t, self.horizon - 2)].cpu().numpy()
        s = self._normalizer("state").normalize(state)
        nxt = self._plan_norm[min(t + 1, self.horizon - 1)][None]
        with torch.no_grad():
            a = self.network.inverse_dynamics(s, nxt)
        return self._normalizer("action").unnormalize(a)[0].cpu().numpy()
