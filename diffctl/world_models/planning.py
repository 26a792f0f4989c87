"""Planning through a world model: inference-time scaling of a diffusion policy with the model as verifier.

``ImaginationAgent.act`` works like a chunk policy: when its action queue is empty it asks the policy for
``candidates`` chunks from the same observation history (different sampling noise), imagines each chunk's
actions in the world model, scores it by the imagined discounted return (plus ``discount^H value(s_H)`` when
a ``value_fn`` is given) and queues the ``n_action_steps`` first actions of the best one.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffctl.core.observations import as_observation
from diffctl.world_models.base import WorldModel


def imagined_return(
    world_model: WorldModel,
    state: torch.Tensor,
    actions: torch.Tensor,
    *,
    discount: float = 1.0,
    reward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    value: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``sum_t discount^t r_t + discount^T value(s_T)`` (B,) of raw ``actions`` (B, T, Da) imagined from raw
    states (B, Ds): ``r_t`` the model's predicted reward, or ``reward(state after action t)`` when given."""
    out = world_model.rollout(state, actions, generator=generator)
    r = out["rewards"] if reward is None else reward(out["observations"])
    weights = discount ** torch.arange(actions.shape[1], dtype=torch.float32)
    score = (r.float() * weights).sum(dim=1)
    if value is not None:
        final = torch.as_tensor(value(out["observations"][:, -1])).reshape(-1).float()
        score = score + discount ** actions.shape[1] * final
    return score


class ImaginationAgent:
    """Best-of-N action chunks of ``policy`` under ``world_model``; see the module docstring."""

    def __init__(
        self,
        policy: Any,
        world_model: WorldModel,
        candidates: int = 8,
        *,
        discount: float = 0.99,
        value_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        seed: int | None = None,
    ) -> None:
        if int(candidates) < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if not 0 < discount <= 1:
            raise ValueError(f"discount must lie in (0, 1], got {discount}")
        if not world_model.check_policy(policy):
            raise ValueError(
                "ImaginationAgent needs a world model whose state is the policy's whole observation"
            )
        self.policy, self.world_model, self.candidates = policy, world_model, int(candidates)
        self.discount, self.value_fn = float(discount), value_fn
        self.n_obs_steps = int(getattr(policy, "n_obs_steps", 1))
        self.n_action_steps = int(getattr(policy, "n_action_steps", 1))
        self.action_dim = world_model.action_dim
        self.task = getattr(policy, "task", None)
        self.last_scores: np.ndarray | None = None
        self.reset(seed)

    def seed(self, seed: int | None) -> None:
        self.generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        if callable(getattr(self.policy, "seed", None)):
            self.policy.seed(seed)

    def reset(self, seed: int | None = None) -> None:
        self.history: collections.deque[np.ndarray] = collections.deque(maxlen=self.n_obs_steps)
        self.queue: collections.deque[np.ndarray] = collections.deque()
        if seed is not None:
            self.seed(seed)
        elif not hasattr(self, "generator"):
            self.generator = None

    def act(self, obs: Any) -> np.ndarray:
        """One observation (the world model's state) -> one action."""
        x = as_observation(obs, (self.world_model.state_dim,))
        if not self.history:
            self.history.extend([x] * self.n_obs_steps)
        else:
            self.history.append(x)
        if not self.queue:
            self.queue.extend(self.plan(np.stack(self.history)))
        return self.queue.popleft()

    @torch.no_grad()
    def plan(self, history: np.ndarray) -> list[np.ndarray]:
        """The executed part of the best of ``candidates`` chunks for one history (To, Ds)."""
        hist = torch.as_tensor(history, dtype=torch.float32)[None].expand(self.candidates, -1, -1)
        chunks = torch.as_tensor(self.policy.predict_chunk(hist), dtype=torch.float32)[
            :, self.n_obs_steps - 1 :
        ]
        scores = imagined_return(self.world_model, hist[:, -1], chunks, discount=self.discount,
                                 value=self.value_fn, generator=self.generator)  # fmt: skip
        self.last_scores = scores.numpy()
        best = int(scores.argmax())
        return [a.numpy() for a in chunks[best, : self.n_action_steps]]
