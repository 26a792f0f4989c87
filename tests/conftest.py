"""Shared test setup: one torch thread (CI has 2 cores), offscreen MuJoCo rendering, and the one-step bandit
the offline RL tests train on."""

import os
from collections.abc import Callable

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
import torch

from diffctl.datasets import EpisodeStore

torch.set_num_threads(1)


def make_bandit(n: int = 512, seed: int = 0) -> EpisodeStore:
    """One-step episodes: state s in {-1, +1}, behaviour actions uniform in [-1, 1], reward
    ``1 - (a - 0.6 s)^2``, terminal. The best action is 0.6 s; the behaviour mean is 0."""
    rng = np.random.default_rng(seed)
    s = rng.choice([-1.0, 1.0], size=(n, 1)).astype(np.float32)
    a = rng.uniform(-1, 1, size=(n, 1)).astype(np.float32)
    data = {
        "observations": s,
        "actions": a,
        "rewards": (1 - (a - 0.6 * s) ** 2).reshape(-1).astype(np.float32),
        "terminals": np.ones(n, dtype=bool),
    }
    return EpisodeStore.from_arrays(data, np.arange(1, n + 1))


@pytest.fixture
def bandit() -> Callable[..., EpisodeStore]:
    """``make_bandit``: call it with the number of transitions (and a seed)."""
    return make_bandit
