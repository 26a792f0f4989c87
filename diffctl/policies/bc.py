"""BCPolicy: a deterministic MLP that regresses action chunks (behaviour cloning), the baseline to beat.

It is also the worked example of ``docs/adding_an_agent.md``: one typed config, one model with ``loss`` and
``predict_chunk``, and no runner of its own (it acts through ``ChunkRunner`` like ``DiffusionPolicy``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from diffctl.core.config import Configurable
from diffctl.core.observations import as_observation
from diffctl.core.persistence import agent_config, build_agent, read_agent_config, write_agent_dir
from diffctl.datasets.normalizer import Normalizer
from diffctl.kernels.losses import masked_mse
from diffctl.nets import mlp
from diffctl.policies.base import ChunkConfig, Policy
from diffctl.policies.diffusion import history_tensor
from diffctl.policies.runner import ChunkRunner

VERSION = 1


@dataclass
class BCPolicyConfig(ChunkConfig):
    """Settings of ``BCPolicy``."""

    section: ClassVar[str] = "BCPolicy"

    hidden: int = 256
    """Width of the MLP."""
    depth: int = 3
    """Hidden layers of the MLP."""
    seed: int = 0
    """Seed of the initial weights."""

    def validate(self) -> None:
        super().validate()
        if self.hidden < 1 or self.depth < 1:
            raise ValueError(f"BCPolicy hidden and depth must be positive, got {self.hidden}, {self.depth}")


class BCPolicy(Configurable, Policy):
    """Observation history (+ goal) -> action chunk by one MLP trained on the mean squared error."""

    config_class: ClassVar[type[BCPolicyConfig]] = BCPolicyConfig
    uses_sampler: ClassVar[bool] = False

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        normalizers: Mapping[str, Normalizer] | None = None,
        **settings: Any,
    ) -> None:
        self.config = cfg = BCPolicyConfig.from_dict(
            {"obs_dim": obs_dim, "action_dim": action_dim, **settings}
        )
        self.obs_dim, self.action_dim, self.goal_dim = cfg.obs_dim, cfg.action_dim, cfg.goal_dim
        self.horizon, self.n_obs_steps, self.n_action_steps = cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps
        self.normalizers = dict(normalizers or {})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            in_dim = cfg.n_obs_steps * cfg.obs_dim + cfg.goal_dim
            self.network: nn.Module = mlp(in_dim, cfg.horizon * cfg.action_dim, cfg.hidden, cfg.depth)
        self.seed(None)
        self.reset()

    def fit_normalizers(self, obs: Any, actions: Any, goal: Any = None, mode: str = "limits") -> None:
        """Fit the observation, action (and goal) normalizers from raw arrays (features on the last axis)."""
        self.normalizers = {
            "obs": Normalizer.fit(np.asarray(obs)[..., : self.obs_dim], mode, name="observations"),
            "action": Normalizer.fit(actions, "limits", name="actions"),
        }
        if self.goal_dim:
            self.normalizers["goal"] = Normalizer.fit(goal, mode, name="goals")

    def _features(self, obs: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        """Raw ``(B, To, Do)`` history (and ``(B, Dg)`` goal) -> the MLP's normalized input."""
        x = self.normalizers["obs"].normalize(obs[..., : self.obs_dim]).flatten(1)
        if self.goal_dim:
            g = obs[:, -1, self.obs_dim :] if goal is None else goal
            x = torch.cat([x, self.normalizers["goal"].normalize(g)], dim=-1)
        return x

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared error between the predicted and the dataset's normalized action chunk (padded
        steps masked out, ``kernels.losses.masked_mse``)."""
        obs, actions = batch["obs"].float(), batch["actions"].float()
        target = self.normalizers["action"].normalize(actions)
        pred = self.network(self._features(obs, batch.get("goal"))).reshape(target.shape)
        mask = batch.get("action_mask")
        loss = masked_mse(pred, target, None if mask is None else mask.float().unsqueeze(-1)).mean()
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def predict_chunk(self, obs_history: Any, **_: Any) -> torch.Tensor:
        """Raw ``(B, H, Da)`` chunks for raw histories ``(B, To, Do [+ Dg])`` (the goal: last step)."""
        hist = history_tensor(self, obs_history)
        chunk = self.network(self._features(hist, None)).reshape(-1, self.horizon, self.action_dim)
        return self.normalizers["action"].unnormalize(chunk.clamp(-1.0, 1.0))

    def check_obs(self, obs: Any) -> np.ndarray:
        """One raw observation ``(Do + Dg,)`` as finite float32, else a ValueError saying why."""
        return as_observation(obs, (self.obs_dim + self.goal_dim,))

    def reset(self, seed: int | None = None) -> None:
        self.runner = ChunkRunner(self)

    def act(self, obs: Any) -> np.ndarray:
        return self.runner.act(obs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_agent_dir(path, agent_config(self, VERSION), self.network.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> BCPolicy:
        if overrides:
            raise ValueError(f"BCPolicy has no sampler or act settings to override, got {sorted(overrides)}")
        config, state = read_agent_config(
            path, cls.__name__, VERSION, keys=("hyperparameters", "normalizers")
        )
        return build_agent(cls, path, config, state)
