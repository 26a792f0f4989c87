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
        state = hist[:, -1]
        out = self.world_model.rollout(state, chunks, generator=self.generator)
        weights = self.discount ** torch.arange(chunks.shape[1], dtype=torch.float32)
        scores = (out["rewards"].float() * weights).sum(dim=1)
        if self.value_fn is not None:
            final = out["observations"][:, -1]
            scores = scores + self.discount ** chunks.shape[1] * torch.as_tensor(
                self.value_fn(final)
            ).reshape(-1)
        self.last_scores = scores.numpy()
        best = int(scores.argmax())
        return [a.numpy() for a in chunks[best, : self.n_action_steps]]
