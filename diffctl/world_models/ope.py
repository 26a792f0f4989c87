"""Offline policy evaluation by imagination: a policy's return estimated by closed-loop rollouts in a world
model from given start states, and the rank agreement of such estimates with true returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffctl.world_models.base import WorldModel


def imagined_returns(
    model: WorldModel,
    policy: Any,
    start_obs: Any,
    horizon: int,
    *,
    discount: float = 1.0,
    stop_at_terminal: bool = True,
    terminal_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Per start state, ``sum_t discount^t r_t`` of ``horizon`` imagined steps of ``policy``; with
    ``stop_at_terminal`` rewards after a predicted terminal (probability > 0.5, or ``terminal_fn`` of the
    imagined state when given, e.g. ``diffctl.envs.termination.termination_fn(task)``) are dropped."""
    if not 0 < discount <= 1:
        raise ValueError(f"discount must lie in (0, 1], got {discount}")
    out = model.rollout(start_obs, policy=policy, horizon=horizon, generator=generator)
    rewards = out["rewards"].double()
    if stop_at_terminal:
        ended = out["terminals"] > 0.5
        if terminal_fn is not None:
            ended = ended | torch.as_tensor(terminal_fn(out["observations"]), dtype=torch.bool)
        ended = ended.double()
        alive = torch.cat([torch.ones_like(ended[:, :1]), 1 - ended[:, :-1]], dim=1).cumprod(dim=1)
        rewards = rewards * alive
    weights = discount ** torch.arange(rewards.shape[1], dtype=torch.float64)
    return (rewards * weights).sum(dim=1).numpy()


def ranks(values: Any) -> np.ndarray:
    """Ranks from 1 (ties get the mean of their ranks)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    out = np.empty(len(v))
    out[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        out[tied] = out[tied].mean()
    return out


def spearman(a: Any, b: Any) -> float:
    """Spearman's rank correlation of two equally long sequences (NaN when either is constant)."""
    ra, rb = ranks(a), ranks(b)
    if len(ra) != len(rb) or len(ra) < 2:
        raise ValueError(f"spearman needs two sequences of the same length >= 2, got {len(ra)} and {len(rb)}")
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
