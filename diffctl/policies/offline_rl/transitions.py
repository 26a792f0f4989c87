"""Single-step transitions ``(s, a, r, s', terminal)`` over an EpisodeStore, gathered vectorized.

Batches use the SequenceDataset layout with a window of one step, so agents accept either source: ``obs``
(B, 1, Do), ``actions`` (B, 1, Da), ``rewards`` (B, 1), ``terminals`` (B, 1), ``next_obs`` (B, 1, Do),
``action_mask`` / ``obs_mask`` (B, 1) and ``goal`` (B, Dg) in goal mode ``task``. A step whose next
observation is unknown (the last step of an episode cut by a time limit, in a store without
``next_observations``) is left out; a terminal last step is kept, since its target does not bootstrap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffctl.datasets.store import EpisodeStore


def _rows(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).reshape(len(array), -1).astype(np.float32, copy=False)


class TransitionDataset:
    """``len()`` transitions and ``get_batch(indices)``; the Trainer samples it like a SequenceDataset."""

    def __init__(
        self,
        store: EpisodeStore,
        obs_keys: Sequence[str] = ("observations",),
        action_key: str = "actions",
        goal: str | None = None,
        *,
        goal_key: str = "infos/goal",
        reward_key: str = "rewards",
        terminal_key: str = "terminals",
        next_obs_key: str = "next_observations",
    ) -> None:
        if goal not in ("task", None):
            raise ValueError(f"TransitionDataset goal mode must be 'task' or None, got {goal!r}")
        keys = set(store.keys)
        needed = [*obs_keys, action_key, reward_key, terminal_key] + ([goal_key] if goal else [])
        missing = [k for k in needed if k not in keys]
        if missing:
            raise ValueError(
                f"{store.name}: missing key(s) {missing} needed for offline RL transitions "
                f"(observations, actions, rewards, terminals); has {sorted(keys)}"
            )
        if store.num_episodes == 0:
            raise ValueError(f"{store.name} has no episodes")
        self.store = store
        self.obs_keys = tuple(obs_keys)
        self._obs = np.concatenate([_rows(store.array(k)) for k in self.obs_keys], axis=1)
        self._actions = _rows(store.array(action_key))
        self._rewards = np.asarray(store.array(reward_key), dtype=np.float32).reshape(-1)
        self._terminals = np.asarray(store.array(terminal_key)).reshape(-1).astype(bool)
        self._goal = _rows(store.array(goal_key)) if goal else None
        n = len(self._obs)
        for name, arr in (("actions", self._actions), ("rewards", self._rewards)):
            if len(arr) != n:
                raise ValueError(f"{store.name}: {name} has {len(arr)} rows, observations {n}")
        if not np.isfinite(self._rewards).all():
            raise ValueError(f"{store.name}: {reward_key} contains NaN or inf")
        ends = np.asarray(store.episode_ends, dtype=np.int64)
        last = np.zeros(n, dtype=bool)
        last[ends - 1] = True
        self.episode_ends = ends
        if self.obs_keys == ("observations",) and next_obs_key in keys:
            self._next_rows = None
            self._next_obs = _rows(store.array(next_obs_key))
            valid = np.ones(n, dtype=bool)
        else:
            self._next_obs = None
            self._next_rows = np.where(last, np.arange(n), np.arange(n) + 1)
            valid = ~last | self._terminals
        self._index = np.flatnonzero(valid)
        if self._index.size == 0:
            raise ValueError(f"{store.name}: no transition has a known next observation")

    def __len__(self) -> int:
        return int(self._index.size)

    @property
    def obs_dim(self) -> int:
        return int(self._obs.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self._actions.shape[1])

    @property
    def goal_dim(self) -> int:
        return 0 if self._goal is None else int(self._goal.shape[1])

    def array(self, key: str) -> np.ndarray:
        """Raw per-step data: ``obs``, ``actions``, ``goal``, ``rewards``, ``terminals`` (all steps)."""
        arrays = {"obs": self._obs, "actions": self._actions, "rewards": self._rewards,
                  "terminals": self._terminals, "goal": self._goal}  # fmt: skip
        if key not in arrays or arrays[key] is None:
            raise ValueError(
                f"TransitionDataset has no array {key!r}; valid: obs, actions, rewards, terminals"
            )
        return arrays[key]

    def get_batch(self, indices: Any) -> dict[str, torch.Tensor]:
        """Transitions ``indices`` (1-D ints into ``range(len(self))``) as a dict of tensors."""
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"transition index out of range for a TransitionDataset of {n} transitions")
        rows = self._index[idx % n]
        nxt = self._next_obs[rows] if self._next_obs is not None else self._obs[self._next_rows[rows]]
        ones = torch.ones(rows.size, 1, dtype=torch.bool)
        batch = {
            "obs": torch.from_numpy(self._obs[rows][:, None]),
            "next_obs": torch.from_numpy(nxt[:, None]),
            "actions": torch.from_numpy(self._actions[rows][:, None]),
            "rewards": torch.from_numpy(self._rewards[rows][:, None]),
            "terminals": torch.from_numpy(self._terminals[rows][:, None]),
            "action_mask": ones,
            "obs_mask": ones.clone(),
        }
        if self._goal is not None:
            batch["goal"] = torch.from_numpy(self._goal[rows])
        return batch
