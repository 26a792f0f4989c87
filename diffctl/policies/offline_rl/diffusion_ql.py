"""Diffusion-QL (Wang et al. 2023): a diffusion actor trained with the denoising (BC) loss plus
``eta * -Q(s, a_pi) / mean|Q|``, where ``a_pi`` is sampled through the whole few-step VP chain with the
autograd graph kept, so the Q gradient flows back through every denoising step. Critic targets use actions
sampled from a Polyak-averaged copy of the actor. Acting samples N candidates and ranks them by Q.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from diffctl.policies.offline_rl.common import OfflineRLAgent, OfflineRLConfig, Transitions
from diffctl.policies.offline_rl.critics import td_target


@dataclass
class DiffusionQLConfig(OfflineRLConfig):
    """Settings of ``DiffusionQL``."""

    section: ClassVar[str] = "DiffusionQL"

    eta: float = 1.0
    """Weight of the normalized Q term against the denoising loss."""

    def validate(self) -> None:
        super().validate()
        if not self.eta >= 0:
            raise ValueError(f"{self.section} eta must be >= 0, got {self.eta!r}")


class DiffusionQL(OfflineRLAgent):
    """Diffusion-QL; ``eta`` weights the normalized Q term against the denoising loss."""

    config_class: ClassVar[type[OfflineRLConfig]] = DiffusionQLConfig
    uses_target_actor = True

    def critic_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        net = self.network
        with torch.no_grad():
            next_a = self.sample_actions(tr.s2, net.actor_target)
            target = td_target(
                tr.r, tr.done, net.critic_target.q_min(tr.s2, next_a), self.hparams["discount"]
            )
        q1, q2 = net.critic(tr.s, tr.a)
        loss = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
        return loss, {"critic_loss": float(loss.detach()), "q_mean": float(q1.detach().mean())}

    def policy_actions(self, tr: Transitions) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample BC loss ``(B,)`` and differentiable policy actions ``(B, Da)`` (the full chain)."""
        bc, _ = self.actor.denoise_step(tr.s, tr.a)
        return bc, self.sample_actions(tr.s)

    def actor_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        bc, a_pi = self.policy_actions(tr)
        q1, q2 = self.q_detached(tr.s, a_pi)
        if bool(torch.rand(()) < 0.5):
            q1, q2 = q2, q1
        q_loss = -q1.mean() / q2.abs().mean().detach().clamp_min(1e-6)
        loss = bc.mean() + self.hparams["eta"] * q_loss
        return loss, {"bc_loss": float(bc.detach().mean()), "actor_q_loss": float(q_loss.detach())}
