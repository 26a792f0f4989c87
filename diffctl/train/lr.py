"""Learning-rate schedule: linear warmup then cosine decay, as a pure function of the optimizer step.

Computing the rate from the step (instead of keeping a stateful scheduler) makes resume exact: the only
scheduler state is the step counter the trainer already checkpoints.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base rate for the update with 0-based index ``step``.

    Warmup rises linearly to 1 over ``warmup_steps`` updates (the first update already uses 1/warmup), then a
    half cosine falls from 1 to ``min_ratio`` at the last update ``total_steps - 1``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    progress = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
