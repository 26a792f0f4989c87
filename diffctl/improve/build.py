"""Build a steered agent from saved checkpoints (what ``diffctl eval --steer`` and the benchmark run).

The verifier checkpoint decides the verifier: a world model becomes a ``WorldModelVerifier`` (its predicted
rewards, or the task's goal-distance progress with ``reward="progress"``), an offline-RL agent a
``QVerifier`` of its critic.
"""

from __future__ import annotations

import os
from typing import Any

from diffctl.core.registry import load
from diffctl.envs.progress import goal_progress
from diffctl.improve.steering import SteeredPolicy, SteeringConfig
from diffctl.improve.verifiers import QVerifier, Verifier, WorldModelVerifier
from diffctl.world_models.base import WorldModel

__all__ = ["load_verifier", "steered_agent"]


def load_verifier(
    path: str | os.PathLike[str], *, reward: str = "model", task: str | None = None
) -> Verifier:
    """The verifier a checkpoint provides (module docstring); ``reward`` is ``model`` or ``progress``."""
    if reward not in ("model", "progress"):
        raise ValueError(f"verifier reward must be 'model' or 'progress', got {reward!r}")
    model = load(path)
    if isinstance(model, WorldModel):
        if reward == "progress":
            name = task or model.task
            if not name:
                raise ValueError(f"reward='progress' needs the task; {path} does not name one")
            return WorldModelVerifier(model, reward=goal_progress(name))
        return WorldModelVerifier(model)
    if reward != "model":
        raise ValueError(
            f"reward={reward!r} applies to world-model verifiers; {path} is a {type(model).__name__}"
        )
    return QVerifier(model)


def steered_agent(
    policy: Any,
    verifier: str | os.PathLike[str] | Verifier,
    *,
    reward: str = "model",
    seed: int | None = None,
    **settings: Any,
) -> SteeredPolicy:
    """``policy`` steered by ``verifier`` (a checkpoint path or a ``Verifier``); ``settings`` are
    ``SteeringConfig`` fields."""
    if not isinstance(verifier, Verifier):
        verifier = load_verifier(verifier, reward=reward, task=getattr(policy, "task", None))
    return SteeredPolicy(policy, verifier, SteeringConfig.from_dict(settings), seed=seed)
