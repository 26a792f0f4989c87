"""EDP, efficient diffusion policies (Kang et al. 2023): Diffusion-QL's objective with the policy action
replaced by the one-step reconstruction of a noised dataset action,
``a0_hat = (a_t - sqrt(1 - abar_t) eps(a_t, t, s)) / sqrt(abar_t)``. The BC loss and ``a0_hat`` come from
the same network call, so the actor update never runs the sampling chain.

The critics default to IQL's (ReLU MLPs reading raw states), as IDQL's do; Diffusion-QL keeps its paper's
Mish critics on normalized states (the comparison is in docs/experiments/offline_rl.md).

``backup`` picks the critics' Bellman target. ``expectile`` (the default) is IQL's in-sample target
``r + discount * V(s')`` with V the ``expectile`` of Q over the dataset actions (as in IDQL), so no action the
data does not contain is ever valued; the actor follows the Q gradient through ``a0_hat`` (a
deterministic-gradient extraction of an IQL critic instead of IQL's advantage weighting), and no training step
samples the actor's chain. ``policy`` (EDP on TD3 / Diffusion-QL) bootstraps from ``min Q_target(s', a')``
with ``a'`` sampled from the target actor; EDP agents saved before ``backup`` existed load with it.

``eta`` defaults to 10, not the paper's 1. The Q term is divided by ``mean|Q|``, which on locomotion data is
large next to how much Q varies over actions, so at ``eta=1`` the denoising loss decides the actor's mode; at
10 the actor moves to higher-advantage actions (docs/experiments/offline_rl.md has the study). Saved agents
keep the ``eta`` they were trained with.

``distill_candidates > 0`` adds a self-distillation term to the actor loss: for ``distill_states`` states of
the batch the actor samples that many low-noise DDIM candidates (start noise ``DISTILL_NOISE_SCALE``, as in
the low-noise argmax act), the target critic picks the best, and the actor's denoising loss on that action is
added with weight ``distill_weight``. It moves the act-time Q ranking into the actor itself (best-of-N policy
improvement, as in SfBC's and IDQL's resampling, turned into a training target). 0 (the default) is EDP as
published. Sampling the candidates costs the most, so only part of the batch gets them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from diffctl.policies.offline_rl.common import (
    LEGACY_HPARAMS,
    OfflineRLConfig,
    Transitions,
    finite_non_negative,
    open_unit_interval,
)
from diffctl.policies.offline_rl.diffusion_ql import DiffusionQL, DiffusionQLConfig
from diffctl.policies.offline_rl.idql import expectile_critic_loss

BACKUPS = ("policy", "expectile")
DISTILL_NOISE_SCALE = 0.5
DISTILL_OFF = {"distill_candidates": 0, "distill_states": 64, "distill_weight": 1.0}


@dataclass
class EDPConfig(DiffusionQLConfig):
    """Settings of ``EDP`` (see the module docstring for the defaults that differ from the paper)."""

    section: ClassVar[str] = "EDP"

    eta: float = 10.0
    critic_activation: str = "relu"
    critic_inputs: Literal["normalized", "raw"] = "raw"
    backup: Literal["policy", "expectile"] = "expectile"
    """Critic target: IQL's in-sample expectile backup, or Diffusion-QL's target-actor backup."""
    expectile: float = 0.7
    """Expectile of the ``expectile`` backup's value net."""
    distill_candidates: int = 0
    """> 0: self-distillation of the best of that many low-noise candidates into the actor."""
    distill_states: int = 64
    """States of each batch that get distillation candidates."""
    distill_weight: float = 1.0
    """Weight of the self-distillation term."""

    def validate(self) -> None:
        super().validate()
        open_unit_interval(f"{self.section} expectile", self.expectile)
        finite_non_negative(f"{self.section} distill_weight", self.distill_weight)
        for key, low in (("distill_candidates", 0), ("distill_states", 1)):
            if getattr(self, key) < low:
                raise ValueError(
                    f"{self.section} {key} must be an integer >= {low}, got {getattr(self, key)}"
                )


class EDP(DiffusionQL):
    """Diffusion-QL with EDP's action approximation in the actor's Q term."""

    config_class: ClassVar[type[OfflineRLConfig]] = EDPConfig
    legacy_hparams: ClassVar[dict[str, Any]] = {**LEGACY_HPARAMS, "backup": "policy", **DISTILL_OFF}

    def __init__(self, obs_dim: int, action_dim: int, **settings: Any) -> None:
        backup = settings.get("backup", EDPConfig.backup)
        self.uses_value = backup == "expectile"
        self.uses_target_actor = backup == "policy"
        super().__init__(obs_dim, action_dim, **settings)

    def critic_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        hp = self.hparams
        if hp["backup"] == "expectile":
            return expectile_critic_loss(self.network, tr, hp["discount"], hp["expectile"])
        return super().critic_loss(tr)

    def policy_actions(self, tr: Transitions) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor.denoise_step(tr.s, tr.a)

    def best_of_samples(self, state: torch.Tensor) -> torch.Tensor:
        """Per state ``(B, Ds)``, the target critic's best of ``distill_candidates`` low-noise DDIM samples of
        the actor ``(B, Da)``; no gradient."""
        n = self.hparams["distill_candidates"]
        noise = DISTILL_NOISE_SCALE * torch.randn(state.shape[0], n, self.action_dim, device=state.device)
        cand, q = self.scored_candidates(state, noise, solver="ddim")
        return cand[torch.arange(state.shape[0], device=state.device), q.argmax(dim=-1)]

    def actor_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        loss, info = super().actor_loss(tr)
        if self.hparams["distill_candidates"] == 0:
            return loss, info
        state = tr.s[: self.hparams["distill_states"]]
        distill, _ = self.actor.denoise_step(state, self.best_of_samples(state))
        info = {**info, "distill_loss": float(distill.detach().mean())}
        return loss + self.hparams["distill_weight"] * distill.mean(), info
