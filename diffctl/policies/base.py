"""The ``Policy`` interface: one environment observation in, one action out.

A policy keeps an observation history and a queue of planned actions (``act``); the heavy work is
``predict_chunk``, which samples a whole action chunk. The plumbing every agent shares (typed configs,
sampler settings, persistence, seeding) lives in ``diffctl.core`` and is re-exported here.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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
