"""``TransitionAgent``: what every single-step offline-RL agent shares, whatever its actor — normalizers of
states, goals and actions, fitting them (and the reward scale) from a ``TransitionDataset``, turning raw
batches into normalized ``Transitions``, acting one step at a time and the target critic's Q as a verifier.

Subclasses build ``network`` (with ``critic`` and ``critic_target`` twin critics), and define
``select_actions`` and the losses: the diffusion agents (``OfflineRLAgent``) and TD3+BC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch.func import functional_call

from diffctl.core.config import Config, Configurable
from diffctl.core.observations import as_observation
from diffctl.datasets.normalizer import Normalizer
from diffctl.policies.base import Policy
from diffctl.policies.offline_rl.critics import TwinQ, returns_reward_scale
from diffctl.policies.offline_rl.transitions import TransitionDataset


class Transitions:
    """A normalized batch: states ``s``, ``s2`` (goal appended), actions ``a``, rewards ``r``, ``done``.

    ``advantage`` (no gradient) is filled by a critic loss that computes ``Q - V`` of the batch anyway (IDQL),
    so that the actor loss of the same step reuses it instead of running the critics again."""

    def __init__(
        self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s2: torch.Tensor, done: torch.Tensor
    ):
        self.s, self.a, self.r, self.s2, self.done = s, a, r, s2, done
        self.advantage: torch.Tensor | None = None


@dataclass
class TransitionAgentConfig(Config):
    """Settings every single-step offline-RL agent shares: dimensions, critics, discount and rewards."""

    section: ClassVar[str] = "TransitionAgent"

    obs_dim: int
    """Observation features (read off the data)."""
    action_dim: int
    """Action features (read off the data)."""
    goal_dim: int = 0
    """Goal features appended to the state (goal-conditioned tasks)."""
    critic_hidden: int = 256
    """Width of the critics' (and value net's) MLPs."""
    critic_depth: int = 3
    """Hidden layers of the critics' MLPs."""
    discount: float = 0.99
    """Bellman discount."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    reward_scale: float = 1.0
    """Rewards are ``reward_scale * r + reward_bias`` in training (fitted when reward_normalization is
    ``returns``)."""
    reward_bias: float = 0.0
    """See ``reward_scale``."""
    reward_normalization: Literal["none", "returns"] = "none"
    """``returns``: fit ``reward_scale`` so episode returns span about 1000 (IQL's locomotion recipe)."""
    seed: int = 0
    """Seed of the networks' initial weights."""

    def validate(self) -> None:
        name = self.section
        for key in ("obs_dim", "action_dim", "critic_hidden", "critic_depth"):
            if getattr(self, key) < 1:
                raise ValueError(f"{name} {key} must be a positive integer, got {getattr(self, key)!r}")
        if self.goal_dim < 0:
            raise ValueError(f"{name} goal_dim must be an integer >= 0, got {self.goal_dim!r}")
        if not 0.0 <= self.discount < 1.0:
            raise ValueError(f"{name} discount must be in [0, 1), got {self.discount}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"{name} tau (target update rate) must be in (0, 1], got {self.tau}")


class TransitionAgent(Configurable, Policy):
    """Base of the single-step offline-RL agents (see the module docstring)."""

    config_class: ClassVar[type[TransitionAgentConfig]] = TransitionAgentConfig
    obs_dim: int
    action_dim: int
    goal_dim: int
    state_dim: int
    normalizers: dict[str, Normalizer]

    @property
    def critic(self) -> TwinQ:
        return self.network.critic

    # ----- normalization -------------------------------------------------------------------------------
    def fit_normalizers(
        self, obs: Any, actions: Any, goal: Any = None, mode: str = "limits", **_: Any
    ) -> None:
        """Fit observation (``mode``), action (always ``limits``: actors live in [-1, 1]) and goal
        normalizers from raw arrays with features on the last axis."""
        obs = np.asarray(obs, dtype=np.float64)[..., : self.obs_dim]
        self.normalizers = {
            "obs": Normalizer.fit(obs, mode, name="observations"),
            "action": Normalizer.fit(actions, "limits", name="actions"),
        }
        if self.goal_dim:
            if goal is None:
                raise ValueError(
                    f"goal-conditioned agent (goal_dim={self.goal_dim}) needs goals to fit normalizers"
                )
            self.normalizers["goal"] = Normalizer.fit(goal, mode, name="goals")
        self.normalizers_changed()

    def normalizers_changed(self) -> None:
        """Hook run after the normalizers are fitted (e.g. critics that read raw states)."""

    @classmethod
    def make_dataset(cls, store: Any, task: Mapping[str, Any]) -> TransitionDataset:
        """Training data for the train pipeline: single-step transitions of ``store`` with the task
        section's ``obs_keys``, ``action_key`` and ``goal`` mode (not the task's action windows)."""
        return TransitionDataset(
            store,
            obs_keys=tuple(task.get("obs_keys", ("observations",))),
            action_key=str(task.get("action_key", "actions")),
            goal=task.get("goal"),
        )

    def fit(self, dataset: Any, mode: str = "gaussian") -> None:
        """Fit normalizers (and the reward scale when ``reward_normalization='returns'``) from a
        ``TransitionDataset``; checks its dimensions against the agent's."""
        if dataset.action_dim != self.action_dim:
            raise ValueError(
                f"dataset actions have {dataset.action_dim} dimensions; {type(self).__name__} was built "
                f"with action_dim={self.action_dim}"
            )
        if dataset.obs_dim != self.obs_dim or dataset.goal_dim != self.goal_dim:
            raise ValueError(
                f"dataset has obs_dim={dataset.obs_dim}, goal_dim={dataset.goal_dim}; the agent expects "
                f"obs_dim={self.obs_dim}, goal_dim={self.goal_dim}"
            )
        goal = dataset.array("goal") if self.goal_dim else None
        self.fit_normalizers(dataset.array("obs"), dataset.array("actions"), goal, mode=mode)
        if self.config.reward_normalization == "returns":
            scale = returns_reward_scale(dataset.array("rewards"), dataset.episode_ends.tolist())
            self.config = self.config.replace(reward_scale=scale)

    def normalizer(self, key: str) -> Normalizer:
        if key not in self.normalizers:
            raise ValueError(f"{type(self).__name__} has no {key!r} normalizer; call fit(...) first")
        return self.normalizers[key]

    def _state(self, obs: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        """Raw ``obs (B, Do)`` and ``goal (B, Dg)`` -> normalized state ``(B, Do + Dg)``."""
        s = self.normalizer("obs").normalize(obs)
        if not self.goal_dim:
            return s
        if goal is None:
            raise ValueError(f"goal-conditioned agent (goal_dim={self.goal_dim}) needs a goal")
        return torch.cat([s, self.normalizer("goal").normalize(goal)], dim=-1)

    def raw_state(self, state: torch.Tensor) -> torch.Tensor:
        """The inverse of ``_state``: normalized ``(B, Do + Dg)`` -> raw observation and goal."""
        obs = self.normalizer("obs").unnormalize(state[..., : self.obs_dim])
        if not self.goal_dim:
            return obs
        return torch.cat([obs, self.normalizer("goal").unnormalize(state[..., self.obs_dim :])], dim=-1)

    def normalized_state(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw observation (goal appended) ``(B, Do + Dg)`` -> normalized state."""
        return self._state(*self._split(raw))

    # ----- training ------------------------------------------------------------------------------------
    def transitions(self, batch: Mapping[str, torch.Tensor]) -> Transitions:
        """Validate a raw batch (TransitionDataset or SequenceDataset with ``next_obs``) and normalize it."""
        need = ("obs", "actions", "rewards", "next_obs", "terminals")
        missing = [k for k in need if k not in batch]
        if missing:
            hint = ""
            if "rewards" in missing:
                hint = " (offline RL needs a dataset with rewards)"
            elif "next_obs" in missing:
                hint = " (build batches with TransitionDataset or SequenceDataset(next_obs=True))"
            raise ValueError(f"batch is missing key(s) {missing}{hint}; got keys {sorted(batch)}")
        device = next(self.network.parameters()).device

        def step0(key: str, width: int | None) -> torch.Tensor:
            x = batch[key].to(device, torch.float32)
            x = x[:, 0] if x.ndim >= 2 and (width is None or x.ndim == 3) else x
            if width is not None and (x.ndim != 2 or x.shape[1] != width):
                raise ValueError(
                    f"batch {key!r} has shape {tuple(batch[key].shape)}; expected (B, 1, {width}) for "
                    f"{type(self).__name__} with {key.split('_')[0]} dimension {width}"
                )
            return x

        obs, nxt = step0("obs", self.obs_dim), step0("next_obs", self.obs_dim)
        actions = step0("actions", self.action_dim)
        rewards = step0("rewards", None).reshape(-1)
        done = step0("terminals", None).reshape(-1)
        goal = batch["goal"].to(device, torch.float32) if "goal" in batch else None
        if self.goal_dim and goal is None:
            raise ValueError(
                f"batch is missing key 'goal' (goal_dim={self.goal_dim}); got keys {sorted(batch)}"
            )
        if not (torch.isfinite(rewards).all() and torch.isfinite(actions).all()):
            raise ValueError("batch rewards or actions contain NaN or inf")
        return Transitions(
            self._state(obs, goal),
            self.normalizer("action").normalize(actions).clamp(-1.0, 1.0),
            self.scale_rewards(rewards),
            self._state(nxt, goal),
            done,
        )

    def scale_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """Raw rewards in the units the critics learn: ``reward_scale * r + reward_bias``."""
        return rewards * self.config.reward_scale + self.config.reward_bias

    def q_detached(
        self, state: torch.Tensor, action: torch.Tensor, critic: TwinQ | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Twin Q (the online critic unless ``critic`` is given) with its weights cut from the graph:
        gradients reach ``action`` only."""
        critic = self.network.critic if critic is None else critic
        params = {k: v.detach() for k, v in critic.named_parameters()}
        return functional_call(critic, params, (state, action))

    def q_value(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The target critic's ``min(Q1, Q2)`` ``(B,)`` of raw observations ``(B, Do [+ Dg])`` and raw actions
        ``(B, Da)``; gradients reach ``action`` only (a verifier for steering other policies)."""
        device = next(self.network.parameters()).device
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        action = torch.as_tensor(action, dtype=torch.float32, device=device)
        if action.ndim != 2 or action.shape[-1] != self.action_dim or len(action) != len(obs):
            raise ValueError(
                f"action must have shape ({len(obs)}, {self.action_dim}), got {tuple(action.shape)}"
            )
        a = self.normalizer("action").normalize(action)
        q1, q2 = self.q_detached(self.normalized_state(obs), a, self.network.critic_target)
        return torch.minimum(q1, q2)

    # ----- acting --------------------------------------------------------------------------------------
    def _split(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        width = self.obs_dim + self.goal_dim
        if obs.shape[-1] != width:
            raise ValueError(
                f"observation has {obs.shape[-1]} features; expected {width}"
                + (f" ({self.obs_dim} state + {self.goal_dim} goal)" if self.goal_dim else "")
            )
        return obs[..., : self.obs_dim], (obs[..., self.obs_dim :] if self.goal_dim else None)

    def select_actions(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Raw observations ``(B, Do [+ Dg])`` -> raw actions ``(B, Da)``."""
        raise NotImplementedError

    def predict_chunk(
        self, obs_history: Any, *, noise: torch.Tensor | None = None, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Chunks of one action ``(B, 1, Da)`` for histories ``(B, To, D)`` (only the last step is used)."""
        if prefix is not None:
            raise ValueError(
                f"{type(self).__name__} acts one step at a time; prefix inpainting is not supported"
            )
        hist = obs_history if torch.is_tensor(obs_history) else torch.as_tensor(np.asarray(obs_history))
        if hist.ndim != 3:
            raise ValueError(f"obs_history must have shape (B, To, D), got {tuple(hist.shape)}")
        return self.select_actions(hist[:, -1], noise).unsqueeze(1)

    def act(self, obs: Any) -> np.ndarray:
        """One observation (state, then goal when the task has one) -> one action in [-1, 1]."""
        arr = as_observation(obs, (self.state_dim,))
        action = self.select_actions(torch.from_numpy(arr)[None])[0]
        return action.cpu().numpy().astype(np.float32)

    def reset(self, seed: int | None = None) -> None:
        """Start an episode (the agent is memoryless); ``seed`` reseeds the sampling generator."""
        if seed is not None:
            self.seed(seed)
