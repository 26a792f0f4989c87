"""What every world model shares: checked inputs and ``rollout``, open loop or closed loop with a policy.

A model predicts a *segment*: from states ``(B, Ds)`` and ``segment`` actions ``(B, segment, Da)`` the next
``segment`` states, rewards and terminal probabilities (raw units). ``rollout`` chains segments to any length:
the last segment's missing actions repeat the last given one and the extra predictions are dropped.
Closed loop, a policy with ``predict_chunk`` acts on the imagined states (its observation history is the
imagined trajectory) and each chunk's first ``n_action_steps`` actions are imagined before it is asked again,
as the policy executes them in the environment. A policy that is asked more often than once per segment
(e.g. one action at a time) gets the segment re-imagined once per chunk (``_closed_segment``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from diffctl.core.config import Config
from diffctl.world_models.data import WorldModelData, task_data


@dataclass
class WorldModelConfig(Config):
    """Settings every world model has; subclasses add their own."""

    section: ClassVar[str] = "WorldModel"

    state_dim: int = 1
    """State width; read off the data."""
    action_dim: int = 1
    """Action width; read off the data."""
    held_out: float = 0.1
    """Share of episodes kept out of training (validation, and the benchmark's held-out episodes)."""
    seed: int = 0
    """Seed of the initial weights."""

    def validate(self) -> None:
        if not 0 <= self.held_out < 1:
            raise ValueError(f"{self.section}.held_out must lie in [0, 1), got {self.held_out}")
        if self.state_dim < 1 or self.action_dim < 1:
            raise ValueError(
                f"{self.section} needs state_dim and action_dim >= 1, got {self.state_dim}, {self.action_dim}"
            )


class WorldModel:
    """Base of the world models; subclasses set ``state_dim``, ``action_dim``, ``segment`` and implement
    ``predict_segment``."""

    state_dim: int
    action_dim: int
    segment: int
    task: str | None = None

    network: torch.nn.Module

    @classmethod
    def make_dataset(cls, store: Any, task: Any) -> WorldModelData:
        """The pipeline hook: the task's windows (their length is set by the model's ``fit``)."""
        return task_data(store, task)

    @classmethod
    def data_dims(cls, dataset: WorldModelData) -> dict[str, int]:
        return {"state_dim": dataset.state_dim, "action_dim": dataset.action_dim}

    def to(self, device: Any) -> Any:
        self.network.to(device)
        return self

    def predict_segment(
        self, obs: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def check_states(self, obs: Any) -> torch.Tensor:
        x = _finite_tensor(obs, "obs")
        if x.ndim != 2 or x.shape[1] != self.state_dim:
            raise ValueError(f"obs must have shape (B, {self.state_dim}), got {tuple(x.shape)}")
        return x

    def check_actions(self, actions: Any, batch: int) -> torch.Tensor:
        a = _finite_tensor(actions, "actions")
        if a.ndim != 3 or a.shape[0] != batch or a.shape[2] != self.action_dim or a.shape[1] < 1:
            raise ValueError(
                f"actions must have shape ({batch}, T >= 1, {self.action_dim}), got {tuple(a.shape)}"
            )
        return a

    @torch.no_grad()
    def rollout(
        self,
        obs: Any,
        actions: Any = None,
        *,
        policy: Any = None,
        horizon: int | None = None,
        generator: torch.Generator | None = None,
        goal: Any = None,
    ) -> dict[str, torch.Tensor]:
        """Imagine from raw states ``obs`` (B, Ds): given ``actions`` (B, T, Da), or ``policy`` acting for
        ``horizon`` steps (``goal`` (B, Dg) for goal-conditioned policies). Returns ``observations``
        (B, T, Ds), the state after each action, ``rewards`` (B, T), ``terminals`` (B, T) (probabilities) and
        ``actions`` (B, T, Da)."""
        s = self.check_states(obs)
        if (actions is None) == (policy is None):
            raise ValueError("rollout needs exactly one of actions= (open loop) or policy= (closed loop)")
        if actions is not None:
            a = self.check_actions(actions, len(s))
            return self._open_loop(s, a, generator)
        if horizon is None or int(horizon) < 1:
            raise ValueError(f"a closed-loop rollout needs horizon >= 1, got {horizon}")
        return self._closed_loop(s, policy, int(horizon), generator, goal)

    def _open_loop(
        self, s: torch.Tensor, a: torch.Tensor, generator: torch.Generator | None
    ) -> dict[str, Any]:
        steps = a.shape[1]
        pad = -steps % self.segment
        if pad:
            a = torch.cat([a, a[:, -1:].expand(-1, pad, -1)], dim=1)
        parts: dict[str, list[torch.Tensor]] = {"observations": [], "rewards": [], "terminals": []}
        for k in range(0, a.shape[1], self.segment):
            out = self.predict_segment(s, a[:, k : k + self.segment], generator)
            for key in parts:
                parts[key].append(out[key])
            s = out["observations"][:, -1]
        result = {key: torch.cat(v, dim=1)[:, :steps] for key, v in parts.items()}
        result["actions"] = a[:, :steps]
        return result

    def _closed_loop(
        self, s: torch.Tensor, policy: Any, horizon: int, generator: torch.Generator | None, goal: Any
    ) -> dict[str, Any]:
        goal_in_state = self.check_policy(policy)
        goal_dim = int(getattr(policy, "goal_dim", 0) or 0)
        g = None
        if goal_dim and not goal_in_state:
            if goal is None:
                raise ValueError(
                    f"{type(policy).__name__} is goal-conditioned: pass goal= of shape (B, {goal_dim})"
                )
            g = _finite_tensor(goal, "goal").reshape(len(s), goal_dim)
        to = int(getattr(policy, "n_obs_steps", 1))
        history = [s] * to
        queue = torch.zeros(len(s), 0, self.action_dim)
        actions, parts = [], {"observations": [], "rewards": [], "terminals": []}
        done = 0
        while done < horizon:
            out, seg, queue = self._closed_segment(s, policy, history, g, horizon - done, queue, generator)
            for key in parts:
                parts[key].append(out[key])
            actions.append(seg)
            history.extend(out["observations"].unbind(1))
            s = out["observations"][:, -1]
            done += seg.shape[1]
        result = {key: torch.cat(v, dim=1)[:, :horizon] for key, v in parts.items()}
        result["actions"] = torch.cat(actions, dim=1)[:, :horizon]
        return result

    def _closed_segment(
        self,
        s: torch.Tensor,
        policy: Any,
        history: list[torch.Tensor],
        goal: torch.Tensor | None,
        remaining: int,
        queue: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """One segment of a closed-loop rollout from ``s``: the actions left of the last chunk (``queue``)
        first, then a new chunk every ``n_action_steps`` steps, asked on the states imagined so far. The
        segment is re-imagined (with the same noise) after each chunk, so every chunk sees states imagined
        under final earlier actions and the model never conditions on actions the policy would not take
        (for a causal model the result is the exact closed loop). Returns the imagination, the segment's
        actions and the chunk's actions left for the next segment."""
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        to = int(getattr(policy, "n_obs_steps", 1))
        length = min(self.segment, remaining)
        seg, queue = queue[:, :length], queue[:, length:]
        out = self._open_loop(s, seg, torch.Generator().manual_seed(seed)) if seg.shape[1] else {}
        while seg.shape[1] < length:
            start = seg.shape[1]
            imagined = list(out["observations"].unbind(1)) if start else []
            hist = torch.stack((history + imagined)[-to:], dim=1)
            if goal is not None:
                hist = torch.cat([hist, goal[:, None].expand(-1, to, -1)], dim=-1)
            chunk = torch.as_tensor(policy.predict_chunk(hist), dtype=torch.float32)[:, to - 1 :]
            new = chunk[:, : min(int(getattr(policy, "n_action_steps", chunk.shape[1])), chunk.shape[1])]
            seg, queue = torch.cat([seg, new[:, : length - start]], dim=1), new[:, length - start :]
            out = self._open_loop(s, seg, torch.Generator().manual_seed(seed))
        return out, seg, queue

    def check_policy(self, policy: Any) -> bool:
        """Refuse a policy from another task, of other dimensions or without ``predict_chunk``; True when the
        model's state is the policy's whole observation (goal included), False when the goal must be given."""
        if not callable(getattr(policy, "predict_chunk", None)):
            raise ValueError(
                f"{type(policy).__name__} has no predict_chunk: closed-loop rollouts need a chunk policy"
            )
        task = getattr(policy, "task", None)
        if self.task and task and task != self.task:
            raise ValueError(f"the policy was trained on task {task!r}, this world model on {self.task!r}")
        if int(getattr(policy, "action_dim", self.action_dim)) != self.action_dim:
            raise ValueError(
                f"the policy acts in {policy.action_dim} dimensions, the world model in {self.action_dim}"
            )
        obs_dim = int(getattr(policy, "obs_dim", self.state_dim))
        goal_dim = int(getattr(policy, "goal_dim", 0) or 0)
        if obs_dim + goal_dim == self.state_dim:
            return True
        if goal_dim and obs_dim == self.state_dim:
            return False
        raise ValueError(
            f"the policy observes {obs_dim} + {goal_dim} (goal) dimensions, "
            f"the world model's state has {self.state_dim}"
        )


def _finite_tensor(value: Any, name: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(
            np.asarray(value, dtype=np.float32) if not isinstance(value, torch.Tensor) else value
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array, got {type(value).__name__}") from err
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be real numbers, got dtype {t.dtype}")
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or inf")
    return t
