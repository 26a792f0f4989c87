"""IDQL (Hansen-Estruch et al. 2023): an implicit Q-learning critic (expectile value, twin Q, target
network) next to a pure behaviour-cloning diffusion actor; acting samples N candidates from the actor and
takes the one the target critic scores highest (or draws from a softmax over Q).
"""

from __future__ import annotations

from typing import Any

import torch

from diffctl.policies.offline_rl.common import OfflineRLAgent, Transitions
from diffctl.policies.offline_rl.critics import expectile_loss, td_target


class IDQL(OfflineRLAgent):
    """IDQL; ``expectile`` (0.7 in the paper's locomotion runs) sets how optimistic V is over Q."""

    uses_value = True
    extra_keys = ("expectile",)

    def __init__(
        self, obs_dim: int, action_dim: int, *, expectile: float = 0.7, n_candidates: int = 64, **kwargs: Any
    ) -> None:
        if not 0.0 < float(expectile) < 1.0:
            raise ValueError(f"{type(self).__name__} expectile must be in (0, 1), got {expectile!r}")
        super().__init__(obs_dim, action_dim, expectile=float(expectile), n_candidates=n_candidates, **kwargs)

    def critic_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        net = self.network
        with torch.no_grad():
            q_target = net.critic_target.q_min(tr.s, tr.a)
            target = td_target(tr.r, tr.done, net.value(tr.s2), self.hparams["discount"])
        v = net.value(tr.s)
        v_loss = expectile_loss(q_target - v, self.hparams["expectile"]).mean()
        q1, q2 = net.critic(tr.s, tr.a)
        q_loss = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
        info = {"value_loss": float(v_loss.detach()), "critic_loss": float(q_loss.detach()),
                "q_mean": float(q1.detach().mean())}  # fmt: skip
        return v_loss + q_loss, info

    def actor_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        bc, _ = self.actor.denoise_step(tr.s, tr.a)
        return bc.mean(), {"bc_loss": float(bc.detach().mean())}


IDQL.merge_signature()
