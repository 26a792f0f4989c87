"""Training windows for world models: ``(s_t, a_t..a_{t+H-1}) -> (s_{t+1}..s_{t+H}, r_t..r_{t+H-1})``.

Windows never cross an episode boundary: the state after the last action of a window must be stored in the
same episode, so a window starting at ``t`` needs ``t + H`` inside it. The window length is set by the model
that trains on the data (``set_horizon``, called from its ``fit``), since the pipeline builds the data before
the model. ``terminals`` are the stored per-step flags (0 where the store has none). With ``goal_key`` (tasks
whose goal is stored per step, e.g. ``infos/goal`` of the mazes) the goal is appended to the state, as the
environment's observation carries it: rewards that depend on the goal become predictable, and a
goal-conditioned policy can act on imagined states directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from diffctl.datasets.store import EpisodeStore


class WorldModelData:
    """Raw arrays of a store plus the start indices of every full window of the current horizon."""

    def __init__(
        self,
        store: EpisodeStore,
        obs_key: str = "observations",
        action_key: str = "actions",
        horizon: int = 1,
        goal_key: str | None = None,
    ) -> None:
        for key in (obs_key, action_key, "rewards", *([goal_key] if goal_key else [])):
            if key not in store.keys:
                raise ValueError(f"a world model needs {key!r} in the dataset; {store.path} has {store.keys}")
        self.obs = np.asarray(store.array(obs_key), np.float32).reshape(store.num_steps, -1)
        if goal_key:
            goal = np.asarray(store.array(goal_key), np.float32).reshape(store.num_steps, -1)
            self.obs = np.concatenate([self.obs, goal], axis=1)
        self.actions = np.asarray(store.array(action_key), np.float32).reshape(store.num_steps, -1)
        self.rewards = np.asarray(store.array("rewards"), np.float32).reshape(-1)
        term = store.array("terminals") if "terminals" in store.keys else np.zeros(store.num_steps)
        self.terminals = np.asarray(term, np.float32).reshape(-1)
        self.episode_ends = np.asarray(store.episode_ends, np.int64)
        self.starts = self.validation = np.zeros(0, np.int64)
        self.set_horizon(horizon)

    @property
    def state_dim(self) -> int:
        return int(self.obs.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def set_horizon(self, horizon: int) -> None:
        """Index every window of ``horizon`` actions; a ValueError when no episode is long enough."""
        if horizon < 1:
            raise ValueError(f"world-model horizon must be >= 1, got {horizon}")
        begins = np.concatenate([[0], self.episode_ends[:-1]])
        starts = [
            np.arange(b, e - horizon)
            for b, e in zip(begins, self.episode_ends, strict=True)
            if e - b > horizon
        ]
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        if not len(self.starts):
            raise ValueError(f"no episode has more than {horizon} steps: no world-model window fits")
        self.horizon = int(horizon)

    def __len__(self) -> int:
        return len(self.starts)

    def held_out_episodes(self, share: float = 0.1, seed: int = 0) -> np.ndarray:
        """The episodes a model holds out: the last ``share`` of a fixed random order (none if only one)."""
        order = np.random.default_rng(seed).permutation(len(self.episode_ends))
        n_val = max(1, round(share * len(order))) if len(order) > 1 and share > 0 else 0
        return np.sort(order[len(order) - n_val :])

    def hold_out(self, share: float = 0.1, seed: int = 0) -> None:
        """Train only on windows outside ``held_out_episodes(share, seed)``; those go to ``validation``."""
        episode = np.searchsorted(self.episode_ends, self.starts, side="right")
        val = np.isin(episode, self.held_out_episodes(share, seed))
        if val.all():
            raise ValueError("holding out episodes left no training window; lower held_out")
        self.validation, self.starts = self.starts[val], self.starts[~val]

    def windows(self, starts: np.ndarray) -> dict[str, torch.Tensor]:
        """The windows (see ``get_batch``) that start at step indices ``starts``."""
        t = np.asarray(starts, dtype=np.int64)
        steps = t[:, None] + np.arange(self.horizon)[None]
        return {
            "obs": torch.from_numpy(self.obs[t]),
            "actions": torch.from_numpy(self.actions[steps]),
            "next_obs": torch.from_numpy(self.obs[steps + 1]),
            "rewards": torch.from_numpy(self.rewards[steps]),
            "terminals": torch.from_numpy(self.terminals[steps]),
        }

    def get_batch(self, indices: Any) -> dict[str, torch.Tensor]:
        """Training windows ``indices``: ``obs`` (B, Ds), ``actions`` (B, H, Da), ``next_obs`` (B, H, Ds),
        ``rewards`` (B, H), ``terminals`` (B, H)."""
        return self.windows(self.starts[np.asarray(indices, dtype=np.int64)])


def task_data(store: EpisodeStore, task: Mapping[str, Any]) -> WorldModelData:
    """The world-model data of a task section: its first observation key, its action key, and its goal
    appended to the state when the task stores one (``goal: task``)."""
    goal = "infos/goal" if task.get("goal") == "task" else None
    obs_key = str(next(iter(task.get("obs_keys", ["observations"]))))
    return WorldModelData(store, obs_key, str(task.get("action_key", "actions")), goal_key=goal)
