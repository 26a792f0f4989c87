"""The ``Policy`` interface: one environment observation in, one action out.

A policy keeps an observation history and a queue of planned actions (``act``); the heavy work is
``predict_chunk``, which samples a whole action chunk. The plumbing every agent shares (typed configs,
sampler settings, persistence, seeding) lives in ``diffctl.core`` and is re-exported here.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from diffctl.core.config import Config
from diffctl.core.modules import eval_mode, param_device
from diffctl.core.persistence import (
    AGENT_KEYS,
    CONFIG_FILE,
    WEIGHTS_FILE,
    agent_config,
    build_agent,
    read_agent_config,
    read_agent_dir,
    write_agent_dir,
)
from diffctl.core.sampler import SamplerConfig
from diffctl.core.seeding import SeededSampler

__all__ = [
    "AGENT_KEYS",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "ChunkConfig",
    "Policy",
    "SamplerConfig",
    "SeededSampler",
    "agent_config",
    "build_agent",
    "eval_mode",
    "param_device",
    "read_agent_config",
    "read_agent_dir",
    "write_agent_dir",
]


@dataclass
class ChunkConfig(Config):
    """The dimensions and chunking every chunk policy's config starts with (the train pipeline reads them
    off the task and the data)."""

    section: ClassVar[str] = "policy"

    obs_dim: int
    """Observation features per step."""
    action_dim: int
    """Action features."""
    goal_dim: int = 0
    """Goal features (> 0: goal-conditioned; the goal follows the last observation)."""
    horizon: int = 16
    """Actions per chunk (H)."""
    n_obs_steps: int = 2
    """Observation history length (To)."""
    n_action_steps: int = 8
    """Actions executed per chunk (Ta), starting at index To - 1."""

    def validate(self) -> None:
        for key in ("obs_dim", "action_dim", "horizon", "n_obs_steps", "n_action_steps"):
            if getattr(self, key) < 1:
                raise ValueError(
                    f"{self.section} {key} must be a positive integer, got {getattr(self, key)!r}"
                )
        if self.goal_dim < 0:
            raise ValueError(f"{self.section} goal_dim must be >= 0, got {self.goal_dim}")
        room = self.horizon - self.n_obs_steps + 1
        if self.n_action_steps > room:
            raise ValueError(
                f"n_action_steps={self.n_action_steps} must be <= horizon - n_obs_steps + 1 = {room}"
            )


class Policy(SeededSampler, ABC):
    """Observation -> action agent backed by one trainable ``network`` (an ``nn.Module``)."""

    network: nn.Module

    @abstractmethod
    def reset(self, seed: int | None = None) -> None:
        """Forget the observation history and planned actions (start of an episode)."""

    @abstractmethod
    def act(self, obs: np.ndarray) -> np.ndarray:
        """One environment observation -> one action."""

    @abstractmethod
    def predict_chunk(
        self, obs_history: Any, *, noise: torch.Tensor | None = None, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sample action chunks ``(B, H, Da)`` (unnormalized) for observation histories ``(B, To, Do)``."""

    @abstractmethod
    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of a raw (unnormalized) batch and scalars to log."""

    @abstractmethod
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into the directory ``path`` atomically."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> Policy:
        """Rebuild a saved policy; ``overrides`` are ``SamplerConfig`` fields."""
