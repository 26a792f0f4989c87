"""Synthetic trajectories from a world model, steered by a target policy (policy-guided synthesis).

Policy-guided diffusion (Jackson et al. 2024) samples whole trajectories from a diffusion model of the
behaviour data and guides the sampled actions toward a target policy, so the synthetic data sits near the
target policy's own state distribution, which offline RL never sees. A world model conditioned on actions
(DWM here) lets the guidance be applied in its strongest form: the actions *are* the target policy's,
plus Gaussian exploration noise of ``action_noise`` times each action dimension's half range, and the model
imagines the states, rewards and terminals they lead to, from start states drawn from the data. Next
observations are stored when the source stores them (otherwise an episode's last step has no known successor
and offline RL leaves it out, as for the real data).

``synthesize`` writes an ``EpisodeStore`` (optionally after the real episodes, ready to train on) with a card
naming the world model, the policy, the source data and the settings. Imagined episodes end at a predicted
terminal (probability above one half) or after ``horizon`` steps (a timeout).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffctl.datasets.store import EpisodeStore

STEP_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


@dataclass(frozen=True)
class SynthesisSettings:
    """How many imagined episodes, how long, how noisy, from which seed; whether real episodes come first."""

    episodes: int = 2000
    horizon: int = 16
    action_noise: float = 0.1
    seed: int = 0
    batch: int = 512
    include_real: bool = True

    def validate(self) -> None:
        for key in ("episodes", "horizon", "batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"synthesis {key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.action_noise < float("inf"):
            raise ValueError(f"synthesis action_noise must be a finite number >= 0, got {self.action_noise}")


class NoisyPolicy:
    """A chunk policy whose raw actions get Gaussian noise (scaled per dimension) and are clipped to the
    data's action range; every other attribute is the wrapped policy's."""

    def __init__(
        self, policy: Any, low: np.ndarray, high: np.ndarray, noise: float, generator: torch.Generator
    ):
        self.policy, self.noise, self.generator = policy, noise, generator
        self.low, self.high = torch.as_tensor(low).float(), torch.as_tensor(high).float()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def predict_chunk(self, history: torch.Tensor) -> torch.Tensor:
        chunk = torch.as_tensor(self.policy.predict_chunk(history), dtype=torch.float32)
        scale = self.noise * (self.high - self.low) / 2
        noise = torch.randn(chunk.shape, generator=self.generator) * scale
        return torch.maximum(torch.minimum(chunk + noise, self.high), self.low)


def start_states(
    store: EpisodeStore, model: Any, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """``count`` states drawn uniformly from the store's steps, in the model's layout (observation, plus the
    goal where the model's state carries it); also the observation width."""
    obs = np.asarray(store.array("observations"), np.float32).reshape(store.num_steps, -1)
    rows = rng.integers(0, store.num_steps, size=count)
    states = obs[rows]
    if model.state_dim != obs.shape[1]:
        goal = store.array("infos/goal") if "infos/goal" in store.keys else None
        width = 0 if goal is None else np.asarray(goal).reshape(store.num_steps, -1).shape[1]
        if goal is None or obs.shape[1] + width != model.state_dim:
            raise ValueError(
                f"the world model's state has {model.state_dim} features; {store.name} has observations of "
                f"{obs.shape[1]}" + (f" and goals of {width}" if goal is not None else " and no goals")
            )
        states = np.concatenate([states, np.asarray(goal, np.float32).reshape(store.num_steps, -1)[rows]], 1)
    return states, obs.shape[1]


def episodes_from_rollout(
    start: np.ndarray, out: Mapping[str, torch.Tensor], obs_dim: int, terminal_fn: Any = None
) -> list[dict]:
    """Cut a batch of imagined rollouts into episodes, each stopping at its first terminal: a predicted one
    (probability above one half) or, with ``terminal_fn``, one the task's rule finds in the imagined state."""
    states = out["observations"].numpy()
    before = np.concatenate([start[:, None], states[:, :-1]], axis=1)
    done = out["terminals"].numpy() > 0.5
    if terminal_fn is not None:
        done |= np.asarray(terminal_fn(out["observations"][..., :obs_dim]), dtype=bool)
    episodes = []
    for i in range(len(start)):
        hits = np.flatnonzero(done[i])
        n = int(hits[0]) + 1 if hits.size else states.shape[1]
        ep = {
            "observations": before[i, :n, :obs_dim],
            "next_observations": states[i, :n, :obs_dim],
            "actions": out["actions"][i, :n].numpy(),
            "rewards": out["rewards"][i, :n].numpy(),
            "terminals": done[i, :n].copy(),
            "timeouts": np.zeros(n, bool),
        }
        ep["timeouts"][-1] = not ep["terminals"][-1]
        if before.shape[2] > obs_dim:
            ep["infos/goal"] = before[i, :n, obs_dim:]
        episodes.append(ep)
    return episodes


def synthesize(
    model: Any,
    policy: Any,
    source: EpisodeStore,
    out: str | os.PathLike[str] | None = None,
    settings: SynthesisSettings | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    origin: Mapping[str, Any] | None = None,
    terminal_fn: Any = None,
) -> EpisodeStore:
    """Imagine ``settings.episodes`` episodes of ``policy`` (with exploration noise) in world ``model`` from
    start states of ``source``; write them (after the real episodes when ``include_real``) to ``out`` (in
    memory when None) with a card. ``origin`` adds entries to the card (e.g. checkpoint paths);
    ``terminal_fn`` (``diffctl.envs.termination.termination_fn(task)``) ends episodes by the task's rule."""
    from tqdm.auto import tqdm

    settings = settings or SynthesisSettings()
    settings.validate()
    t0 = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    actions = np.asarray(source.array("actions"), np.float32).reshape(source.num_steps, -1)
    noisy = NoisyPolicy(policy, actions.min(0), actions.max(0), settings.action_noise, gen)
    starts, obs_dim = start_states(source, model, settings.episodes, rng)
    episodes: list[dict] = []
    for k in tqdm(range(0, settings.episodes, settings.batch), desc="synthesize", disable=not progress):
        batch = starts[k : k + settings.batch]
        result = model.rollout(torch.from_numpy(batch), policy=noisy, horizon=settings.horizon, generator=gen)
        episodes += episodes_from_rollout(batch, result, obs_dim, terminal_fn)
    keys = [k for k in STEP_KEYS if k != "next_observations" or "next_observations" in source.keys]
    if "infos/goal" in episodes[0]:
        keys.append("infos/goal")
    data = {key: np.concatenate([ep[key] for ep in episodes]) for key in keys}
    ends = np.cumsum([len(ep["rewards"]) for ep in episodes])
    real_steps = 0
    if settings.include_real:
        data, ends, real_steps = _prepend_real(source, data, ends, keys)
    card = {
        "generator": "diffctl.world_models.synthesis",
        "dataset": f"{source.attrs.get('dataset') or source.name}-synthetic",
        "task": source.attrs.get("task"),
        "recipe": "policy-guided synthesis (target policy's actions + noise, imagined by a world model)",
        "source": {"name": source.name, "path": str(source.path or ""), "steps": int(source.num_steps)},
        "settings": settings.__dict__,
        "synthetic_steps": int(ends[-1] - real_steps),
        "real_steps": int(real_steps),
        "mean_synthetic_length": float(np.mean([len(ep["rewards"]) for ep in episodes])),
        "termination_rule": terminal_fn is not None,
        "generation_seconds": round(time.perf_counter() - t0, 3),
        **dict(origin or {}),
    }
    return EpisodeStore.from_arrays(data, ends, path=out, overwrite=overwrite, attrs=card)


def _prepend_real(
    source: EpisodeStore, data: dict[str, np.ndarray], ends: np.ndarray, keys: list[str]
) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    """The source's episodes followed by the synthetic ones (timeouts at the source's non-terminal episode
    ends when it stores none)."""
    n = source.num_steps
    real: dict[str, np.ndarray] = {}
    for key in keys:
        if key in source.keys:
            real[key] = np.asarray(source.array(key)).reshape(n, *data[key].shape[1:]).astype(data[key].dtype)
    if "terminals" not in real:
        real["terminals"] = np.zeros(n, bool)
    if "timeouts" not in real:
        real["timeouts"] = np.zeros(n, bool)
        last = np.asarray(source.episode_ends) - 1
        real["timeouts"][last] = ~real["terminals"][last]
    merged = {key: np.concatenate([real[key], data[key]]) for key in keys}
    return merged, np.concatenate([np.asarray(source.episode_ends), ends + n]), n
