"""Model-based value expansion (MVE; DWM-TD3BC): a critic's target that looks H imagined steps ahead.

For a transition ``(s, a, r, s')`` the target is ``r + discount * G(s')`` with

    G(s') = sum_{k<H} discount^k c_k r_hat_k + discount^H c_H V(s_hat_H),   c_0 = 1, c_{k+1} = c_k (1 - p_k)

where the world model imagines ``s_hat_1..H``, rewards ``r_hat_k`` and terminal probabilities ``p_k`` from
``s_hat_0 = s'`` with the policy acting on the imagined states, and ``V`` is the critic's value at the
horizon (H = 0 is the ordinary one-step target). The imagined actions are the target policy's, so the
expansion estimates the return of the policy being learned, not of the data's behaviour.

A one-step model (``segment == 1``) imagines step by step, the policy acting on each new state. A model that
predicts a whole segment from its actions (DWM) needs those actions up front: ``policy_rollout`` imagines
segment by segment, starting from the policy's action at the segment's first state repeated; each refinement
re-imagines the segment with the policy's actions at the states just imagined (Picard iteration, with the
same noise every time). After ``k`` refinements the first ``k + 1`` actions of a segment are the policy's at
the imagined states whenever the model is causal; ``segment - 1`` refinements give the exact closed loop
(what ``WorldModel.rollout(policy=...)`` does), fewer trade accuracy for model calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Actor = Callable[[torch.Tensor], torch.Tensor]
"""Raw states ``(B, Ds)`` -> raw actions ``(B, Da)``."""


def continuation(terminals: torch.Tensor) -> torch.Tensor:
    """Probabilities ``(B, H + 1)`` that an imagined episode is still running before step k: ``c_0 = 1``,
    ``c_{k+1} = c_k (1 - p_k)`` for terminal probabilities ``p`` ``(B, H)``."""
    alive = torch.cumprod(1.0 - terminals.clamp(0.0, 1.0), dim=1)
    return torch.cat([torch.ones_like(alive[:, :1]), alive], dim=1)


def expanded_return(
    rewards: torch.Tensor, terminals: torch.Tensor, final_value: torch.Tensor, discount: float
) -> torch.Tensor:
    """``G = sum_k discount^k c_k r_k + discount^H c_H V`` ``(B,)`` from imagined rewards ``(B, H)``, terminal
    probabilities ``(B, H)`` and the value at the horizon ``(B,)`` (module docstring)."""
    if rewards.shape != terminals.shape or rewards.ndim != 2 or final_value.shape != rewards.shape[:1]:
        raise ValueError(
            f"expanded_return needs rewards and terminals (B, H) and final_value (B,); got "
            f"{tuple(rewards.shape)}, {tuple(terminals.shape)}, {tuple(final_value.shape)}"
        )
    horizon = rewards.shape[1]
    powers = discount ** torch.arange(horizon + 1, dtype=rewards.dtype, device=rewards.device)
    alive = continuation(terminals)
    imagined = (powers[:horizon] * alive[:, :horizon] * rewards).sum(1)
    return imagined + powers[horizon] * alive[:, horizon] * final_value


@torch.no_grad()
def policy_rollout(
    model: Any,
    states: torch.Tensor,
    actor: Actor,
    horizon: int,
    refinements: int = 1,
    seed: int | None = None,
) -> dict[str, torch.Tensor]:
    """Imagine ``horizon`` steps of ``actor`` from raw ``states`` ``(B, Ds)`` in world model ``model``;
    returns ``observations`` ``(B, H, Ds)``, ``rewards`` and ``terminals`` ``(B, H)`` and the ``actions``
    ``(B, H, Da)`` taken (see the module docstring for segment models and ``refinements``). ``seed`` fixes
    the model's sampling noise."""
    if horizon < 1:
        raise ValueError(f"policy_rollout needs horizon >= 1, got {horizon}")
    if refinements < 0:
        raise ValueError(f"refinements must be >= 0, got {refinements}")
    seed = int(torch.randint(0, 2**62, ())) if seed is None else seed
    if int(model.segment) == 1:
        return model.rollout(states, policy=_StepActor(actor), horizon=horizon,
                             generator=torch.Generator().manual_seed(seed))  # fmt: skip
    parts: list[dict[str, torch.Tensor]] = []
    for k, start in enumerate(range(0, horizon, int(model.segment))):
        length = min(int(model.segment), horizon - start)
        parts.append(_refined_segment(model, states, actor, length, refinements, seed + k))
        states = parts[-1]["observations"][:, -1]
    return {key: torch.cat([p[key] for p in parts], dim=1) for key in parts[0]}


def _refined_segment(
    model: Any, states: torch.Tensor, actor: Actor, length: int, refinements: int, seed: int
) -> dict[str, torch.Tensor]:
    """One segment: the actor's action at ``states`` repeated, then ``refinements`` re-imaginations with the
    actor's actions at the states just imagined (at most ``length - 1``: more change nothing)."""
    actions = actor(states)[:, None].expand(-1, length, -1)
    out = model.rollout(states, actions, generator=torch.Generator().manual_seed(seed))
    for _ in range(min(refinements, length - 1)):
        before = torch.cat([states[:, None], out["observations"][:, :-1]], dim=1)
        actions = actor(before.flatten(0, 1)).reshape(actions.shape)
        out = model.rollout(states, actions, generator=torch.Generator().manual_seed(seed))
    return out


class _StepActor:
    """An ``Actor`` as the chunk policy ``WorldModel.rollout`` asks for: one action per imagined state."""

    n_obs_steps = 1
    n_action_steps = 1

    def __init__(self, actor: Actor) -> None:
        self.actor = actor

    def predict_chunk(self, history: torch.Tensor) -> torch.Tensor:
        return self.actor(history[:, -1])[:, None]
