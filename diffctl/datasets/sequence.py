"""SequenceDataset: fixed-length training windows over an EpisodeStore, gathered with vectorized indexing.

A window of ``horizon`` steps starts anywhere from ``pad_before`` steps before an episode's first step
to ``pad_after`` steps past its last; out-of-episode steps repeat the nearest edge and are flagged in the pad
masks (the diffusion_policy convention: ``pad_before = n_obs_steps - 1``, ``pad_after = n_action_steps - 1``).
The observation history is the window's first ``n_obs_steps`` steps; its last one is the "current" step at
which goals and returns-to-go are taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from diffctl.datasets.store import EpisodeStore

GOAL_MODES = ("task", "hindsight", None)


def discounted_returns_to_go(rewards: np.ndarray, episode_ends: np.ndarray, gamma: float) -> np.ndarray:
    """Per-step ``sum_k gamma^k r_{t+k}`` to each episode's end, in float64 (blockwise, stable)."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"discount gamma must be in [0, 1], got {gamma}")
    r = np.asarray(rewards, dtype=np.float64)
    out = np.empty_like(r)
    block = 64
    powers = gamma ** np.arange(block + 1, dtype=np.float64)
    start = 0
    for end in np.asarray(episode_ends, dtype=np.int64):
        rev = r[start:end][::-1]
        acc = np.empty_like(rev)
        carry = 0.0
        for b in range(0, rev.size, block):
            chunk = rev[b : b + block]
            n = chunk.size
            if gamma == 0.0:
                acc[b : b + n] = chunk
                continue
            scaled = np.cumsum(chunk / powers[:n])
            acc[b : b + n] = scaled * powers[:n] + carry * powers[1 : n + 1]
            carry = acc[b + n - 1]
        out[start:end] = acc[::-1]
        start = int(end)
    return out


def _as_2d(values: np.ndarray) -> np.ndarray:
    return values.reshape(values.shape[0], -1)


class SequenceDataset:
    """Windows of ``horizon`` steps with an ``n_obs_steps`` history; ``get_batch(indices)`` returns tensors.

    Batch keys: ``obs`` (B, To, Do) (a dict of (B, To, ...) when an observation key is not a flat vector),
    ``obs_mask`` (B, To), ``actions`` (B, H, Da), ``action_mask`` (B, H); ``goal`` (B, Dg) with ``goal`` set;
    ``rewards`` (B, H), ``returns`` (B,), ``terminals`` (B, H) when the store has rewards / terminals;
    ``next_obs`` (B, To, Do) with ``next_obs=True``; ``images`` {key: (B, To, H, W, C) uint8} for the
    ``image_keys`` (camera frames, apart from the flat ``obs``). Values are raw (not normalized).
    """

    def __init__(
        self,
        store: EpisodeStore,
        horizon: int,
        n_obs_steps: int = 1,
        n_action_steps: int = 1,
        obs_keys: Sequence[str] = ("observations",),
        action_key: str = "actions",
        goal: str | None = None,
        *,
        image_keys: Sequence[str] = (),
        goal_key: str = "infos/goal",
        goal_dims: Sequence[int] | None = None,
        next_obs: bool = False,
        reward_key: str = "rewards",
        terminal_key: str = "terminals",
        discount: float = 0.99,
        pad_before: int | None = None,
        pad_after: int | None = None,
        episodes: Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        if horizon < 1 or n_obs_steps < 1 or n_action_steps < 1:
            raise ValueError(
                f"horizon ({horizon}), n_obs_steps ({n_obs_steps}) and n_action_steps ({n_action_steps}) "
                "must be >= 1"
            )
        if n_obs_steps > horizon:
            raise ValueError(f"n_obs_steps ({n_obs_steps}) must not exceed horizon ({horizon})")
        if goal not in GOAL_MODES:
            raise ValueError(f"unknown goal mode {goal!r}; expected one of {GOAL_MODES}")
        self.store = store
        self.horizon = int(horizon)
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)
        self.obs_keys = tuple(obs_keys)
        self.action_key = action_key
        self.goal = goal
        self.discount = float(discount)
        self.pad_before = self.n_obs_steps - 1 if pad_before is None else int(pad_before)
        self.pad_after = self.n_action_steps - 1 if pad_after is None else int(pad_after)
        if self.pad_before < 0 or self.pad_after < 0:
            raise ValueError(f"pad_before/pad_after must be >= 0, got {self.pad_before}/{self.pad_after}")
        self._rng = np.random.default_rng(seed)

        keys = set(store.keys)
        self.image_keys = tuple(image_keys)
        needed = [*self.obs_keys, *self.image_keys, action_key] + ([goal_key] if goal == "task" else [])
        missing = [k for k in needed if k not in keys]
        if missing:
            raise ValueError(
                f"{store.name}: missing key(s) {missing} needed by SequenceDataset; has {sorted(keys)}"
            )
        if store.num_episodes == 0:
            raise ValueError(f"{store.name} has no episodes")

        self._obs = {k: store.array(k) for k in self.obs_keys}
        self._images = {k: store.array(k) for k in self.image_keys}
        for key, frames in self._images.items():
            if frames.ndim != 4 or frames.dtype != np.uint8:
                raise ValueError(
                    f"{store.name}: image key {key!r} must hold uint8 frames (T, H, W, C), got "
                    f"{frames.dtype} {frames.shape}"
                )
        self.flat_obs = all(v.ndim <= 2 for v in self._obs.values())
        self._obs_flat = (
            np.concatenate([_as_2d(v).astype(np.float32, copy=False) for v in self._obs.values()], axis=1)
            if self.flat_obs
            else None
        )
        self._actions = _as_2d(store.array(action_key)).astype(np.float32, copy=False)
        self._goal: np.ndarray | None = None
        if goal == "task":
            self._goal = _as_2d(store.array(goal_key)).astype(np.float32, copy=False)
        elif goal == "hindsight":
            if self._obs_flat is None:
                raise ValueError("goal='hindsight' needs flat vector observations")
            dims = list(goal_dims) if goal_dims is not None else list(range(self._obs_flat.shape[1]))
            if not dims or max(dims) >= self._obs_flat.shape[1] or min(dims) < 0:
                raise ValueError(
                    f"goal_dims {dims} out of range for observations of width {self._obs_flat.shape[1]}"
                )
            self._goal = np.ascontiguousarray(self._obs_flat[:, dims])
        self._next_obs: np.ndarray | None = None
        if next_obs:
            if self._obs_flat is None:
                raise ValueError("next_obs=True needs flat vector observations")
            self._next_obs = (
                _as_2d(store.array("next_observations")).astype(np.float32, copy=False)
                if self.obs_keys == ("observations",) and "next_observations" in keys
                else None
            )
            self._shift_next = self._next_obs is None
        self._rewards = store.array(reward_key).reshape(-1).astype(np.float32) if reward_key in keys else None
        self._terminals = store.array(terminal_key).reshape(-1).astype(bool) if terminal_key in keys else None
        self._returns = (
            discounted_returns_to_go(self._rewards, store.episode_ends, self.discount).astype(np.float32)
            if self._rewards is not None
            else None
        )
        self._build_index(store.episode_ends, episodes)

    def _build_index(self, ends: np.ndarray, episodes: Sequence[int] | None) -> None:
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        lengths = (ends - starts).astype(np.int64)
        chosen = np.arange(ends.size) if episodes is None else np.asarray(episodes, dtype=np.int64)
        if chosen.size and (chosen.min() < -ends.size or chosen.max() >= ends.size):
            raise ValueError(f"episode indices out of range for {self.store.name} with {ends.size} episodes")
        chosen = chosen % max(ends.size, 1)
        # windows start at s in [-pad_before, L - H + pad_after]
        counts = np.maximum(lengths[chosen] - self.horizon + self.pad_after + self.pad_before + 1, 0)
        if counts.sum() == 0:
            raise ValueError(
                f"{self.store.name}: no window of horizon {self.horizon} fits the episodes "
                f"(longest {int(lengths.max())} steps, pad_before {self.pad_before}, "
                f"pad_after {self.pad_after})"
            )
        ep_of_window = np.repeat(chosen, counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        self._rel_start = (np.arange(counts.sum()) - first - self.pad_before).astype(np.int64)
        self._ep_start = starts[ep_of_window]
        self._ep_len = lengths[ep_of_window]
        self._episode_of_window = ep_of_window

    def __len__(self) -> int:
        return int(self._rel_start.size)

    @property
    def obs_dim(self) -> int:
        if self._obs_flat is None:
            raise ValueError("observations are not flat vectors")
        return int(self._obs_flat.shape[1])

    @property
    def image_shapes(self) -> dict[str, list[int]]:
        """Camera key -> (H, W, C) of its frames (empty without ``image_keys``)."""
        return {k: [int(v) for v in frames.shape[1:]] for k, frames in self._images.items()}

    @property
    def action_dim(self) -> int:
        return int(self._actions.shape[1])

    @property
    def goal_dim(self) -> int | None:
        return None if self._goal is None else int(self._goal.shape[1])

    def episode_of(self, indices: Any) -> np.ndarray:
        return self._episode_of_window[np.asarray(indices, dtype=np.int64)]

    def array(self, key: str) -> np.ndarray:
        """Raw concatenated data of ``key`` (e.g. to fit a Normalizer); ``obs`` is the flat observation."""
        if key == "obs":
            if self._obs_flat is None:
                raise ValueError("observations are not flat vectors; use a store key")
            return self._obs_flat
        if key == "actions":
            return self._actions
        if key == "goal" and self._goal is not None:
            return self._goal
        return self.store.array(key)

    def get_batch(self, indices: Any, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Gather the windows ``indices`` (1-D ints) into a dict of tensors, vectorized over the batch."""
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"window index out of range for a SequenceDataset of {n} windows")
        idx %= max(n, 1)
        rel = self._rel_start[idx, None] + np.arange(self.horizon)
        length = self._ep_len[idx, None]
        mask = (rel >= 0) & (rel < length)
        glob = np.clip(rel, 0, length - 1) + self._ep_start[idx, None]
        to = self.n_obs_steps
        obs_rows = glob[:, :to]
        batch: dict[str, Any] = {
            "actions": torch.from_numpy(self._actions[glob]),
            "action_mask": torch.from_numpy(mask),
            "obs_mask": torch.from_numpy(np.ascontiguousarray(mask[:, :to])),
        }
        if self._obs_flat is not None:
            batch["obs"] = torch.from_numpy(self._obs_flat[obs_rows])
        else:
            batch["obs"] = {
                k: torch.from_numpy(np.ascontiguousarray(v[obs_rows])) for k, v in self._obs.items()
            }
        if self._images:
            batch["images"] = {k: torch.from_numpy(v[obs_rows]) for k, v in self._images.items()}
        current_rel = np.clip(rel[:, to - 1], 0, length[:, 0] - 1)
        current = current_rel + self._ep_start[idx]
        if self._goal is not None:
            if self.goal == "hindsight":
                gen = rng if rng is not None else self._rng
                span = length[:, 0] - current_rel
                future = current + np.floor(gen.random(idx.size) * span).astype(np.int64)
                batch["goal"] = torch.from_numpy(self._goal[future])
            else:
                batch["goal"] = torch.from_numpy(self._goal[current])
        if self._next_obs is not None or getattr(self, "_shift_next", False):
            if self._next_obs is not None:
                batch["next_obs"] = torch.from_numpy(self._next_obs[obs_rows])
            else:
                nxt = np.minimum(np.clip(rel[:, :to], 0, None) + 1, length - 1) + self._ep_start[idx, None]
                batch["next_obs"] = torch.from_numpy(self._obs_flat[nxt])
        if self._rewards is not None:
            batch["rewards"] = torch.from_numpy(np.where(mask, self._rewards[glob], np.float32(0.0)))
            batch["returns"] = torch.from_numpy(self._returns[current])
        if self._terminals is not None:
            batch["terminals"] = torch.from_numpy(self._terminals[glob] & mask)
        return batch

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.get_batch([i])
        return {
            k: ({kk: vv[0] for kk, vv in v.items()} if isinstance(v, dict) else v[0])
            for k, v in batch.items()
        }

    def sample(self, batch_size: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """A batch of uniformly random windows."""
        gen = rng if rng is not None else self._rng
        return self.get_batch(gen.integers(0, len(self), size=batch_size), rng=gen)

    def split(self, val_fraction: float, seed: int = 0) -> tuple[SequenceDataset, SequenceDataset]:
        """Train / validation datasets over disjoint episodes."""
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        n = self.store.num_episodes
        if n < 2:
            raise ValueError(f"{self.store.name}: need at least 2 episodes to split, has {n}")
        perm = np.random.default_rng(seed).permutation(n)
        n_val = min(max(1, round(n * val_fraction)), n - 1)
        return self._with_episodes(np.sort(perm[n_val:])), self._with_episodes(np.sort(perm[:n_val]))

    def _with_episodes(self, episodes: np.ndarray) -> SequenceDataset:
        clone = object.__new__(SequenceDataset)
        clone.__dict__.update(self.__dict__)
        clone._rng = np.random.default_rng(self._rng.integers(1 << 31))
        clone._build_index(self.store.episode_ends, episodes)
        return clone
