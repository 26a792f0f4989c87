"""IDQL (Hansen-Estruch et al. 2023): an implicit Q-learning critic (expectile value, twin Q, target
network) next to a pure behaviour-cloning diffusion actor; acting samples N candidates from the actor and
takes the one the target critic scores highest (or draws from a softmax over Q).

``awr_beta > 0`` weights each sample's denoising loss by ``exp(awr_beta * (Q - V))`` (clipped at
``AWR_MAX_WEIGHT``): IQL's advantage-weighted regression with the diffusion ELBO in place of the Gaussian
log-likelihood, as in EDP's IQL variant. It tilts the actor toward actions the critic prefers instead of
leaving all policy improvement to the act-time ranking. 0 (the default) is the paper's pure BC actor.

The critics default to IQL's: ReLU MLPs reading raw (unnormalized) states, whose advantages an
advantage-weighted actor can use (``diffctl.bench.critic_probe`` checks a critic this way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from diffctl.policies.offline_rl.common import (
    OfflineRLAgent,
    OfflineRLConfig,
    OfflineRLNet,
    Transitions,
    finite_non_negative,
    open_unit_interval,
)
from diffctl.policies.offline_rl.critics import expectile_loss, td_target

AWR_MAX_WEIGHT = 100.0


def awr_weights(advantage: torch.Tensor, beta: float) -> torch.Tensor:
    """IQL's advantage weights ``min(exp(beta * advantage), AWR_MAX_WEIGHT)``."""
    return torch.exp(beta * advantage).clamp(max=AWR_MAX_WEIGHT)


def expectile_critic_loss(
    net: OfflineRLNet, tr: Transitions, discount: float, expectile: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """IQL's critic losses on a batch: V fitted to the ``expectile`` of the target critic's ``min(Q1, Q2)``
    over the dataset actions, and both Q fitted to ``r + discount * V(s')``; no action is ever sampled.
    Stores the batch's advantage ``Q_target - V`` in ``tr.advantage`` for the actor loss."""
    with torch.no_grad():
        q_target = net.critic_target.q_min(tr.s, tr.a)
        target = td_target(tr.r, tr.done, net.value(tr.s2), discount)
    v = net.value(tr.s)
    tr.advantage = (q_target - v).detach()
    v_loss = expectile_loss(q_target - v, expectile).mean()
    q1, q2 = net.critic(tr.s, tr.a)
    q_loss = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
    info = {"value_loss": float(v_loss.detach()), "critic_loss": float(q_loss.detach()),
            "q_mean": float(q1.detach().mean())}  # fmt: skip
    return v_loss + q_loss, info


@dataclass
class IDQLConfig(OfflineRLConfig):
    """Settings of ``IDQL``: IQL critics on raw states, 64 candidates ranked by Q."""

    section: ClassVar[str] = "IDQL"

    critic_activation: str = "relu"
    critic_inputs: Literal["normalized", "raw"] = "raw"
    n_candidates: int = 64
    expectile: float = 0.7
    """How optimistic V is over Q (IQL's expectile)."""
    awr_beta: float = 0.0
    """Advantage weighting of the actor's denoising loss (0: pure BC; IQL uses 3 on locomotion)."""

    def validate(self) -> None:
        super().validate()
        open_unit_interval(f"{self.section} expectile", self.expectile)
        finite_non_negative(f"{self.section} awr_beta", self.awr_beta)


class IDQL(OfflineRLAgent):
    """IDQL: a pure BC (optionally advantage-weighted) diffusion actor, IQL critics, act = best of N by Q."""

    config_class: ClassVar[type[OfflineRLConfig]] = IDQLConfig
    uses_value = True

    def critic_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        return expectile_critic_loss(self.network, tr, self.config.discount, self.config.expectile)

    @torch.no_grad()
    def advantage(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``Q_target(s, a) - V(s)`` of normalized states and actions, no gradient."""
        net = self.network
        return net.critic_target.q_min(state, action) - net.value(state)

    def advantage_weights(self, tr: Transitions) -> torch.Tensor:
        """``awr_weights`` of the batch's advantages at ``awr_beta``, no gradient; the advantage comes from
        this step's ``critic_loss`` when it ran on ``tr``."""
        if tr.advantage is None:
            tr.advantage = self.advantage(tr.s, tr.a)
        return awr_weights(tr.advantage, self.config.awr_beta)

    def actor_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        bc, _ = self.actor.denoise_step(tr.s, tr.a)
        info = {"bc_loss": float(bc.detach().mean())}
        if self.config.awr_beta == 0.0:
            return bc.mean(), info
        weights = self.advantage_weights(tr)
        return (weights * bc).mean(), {**info, "awr_weight_mean": float(weights.mean())}
