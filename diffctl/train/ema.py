"""Exponential moving average of a network's weights with the power warmup schedule of Diffusion Policy.

Early in training the average follows the weights closely (small decay) and it slows down as training goes on:
``decay = 1 - (1 + t / inv_gamma) ** -power`` clipped to ``[min_decay, max_decay]``, with
``t = updates - update_after - 1`` and decay 0 (plain copy) while ``t <= 0``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def ema_decay(
    updates: int,
    *,
    power: float = 0.75,
    inv_gamma: float = 1.0,
    min_decay: float = 0.0,
    max_decay: float = 0.9999,
    update_after: int = 0,
) -> float:
    """Decay used after ``updates`` optimizer steps (1 after the first step)."""
    t = updates - update_after - 1
    if t <= 0:
        return 0.0
    value = 1.0 - (1.0 + t / inv_gamma) ** -power
    return max(min_decay, min(value, max_decay))


class EMA:
    """Shadow copy of a module's floating-point parameters and buffers."""

    def __init__(
        self,
        module: nn.Module,
        *,
        power: float = 0.75,
        inv_gamma: float = 1.0,
        min_decay: float = 0.0,
        max_decay: float = 0.9999,
        update_after: int = 0,
    ) -> None:
        if power <= 0 or inv_gamma <= 0:
            raise ValueError(f"EMA power and inv_gamma must be positive, got {power} and {inv_gamma}")
        if not 0.0 <= min_decay <= max_decay <= 1.0:
            raise ValueError(f"EMA decays must satisfy 0 <= min <= max <= 1, got {min_decay}, {max_decay}")
        self.power, self.inv_gamma = power, inv_gamma
        self.min_decay, self.max_decay, self.update_after = min_decay, max_decay, update_after
        self.shadow: dict[str, torch.Tensor] = {
            name: value.detach().clone() for name, value in module.state_dict().items()
        }
        self.decay = 0.0

    @torch.no_grad()
    def update(self, module: nn.Module, updates: int) -> float:
        """Blend the module's current weights into the shadow; returns the decay used."""
        self.decay = ema_decay(
            updates,
            power=self.power,
            inv_gamma=self.inv_gamma,
            min_decay=self.min_decay,
            max_decay=self.max_decay,
            update_after=self.update_after,
        )
        for name, value in module.state_dict().items():
            shadow = self.shadow[name]
            if shadow.is_floating_point():
                shadow.lerp_(value.detach(), 1.0 - self.decay)
            else:
                shadow.copy_(value)
        return self.decay

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(
                f"EMA state does not match the network: missing {missing}, unexpected {unexpected}"
            )
        for name, value in state.items():
            self.shadow[name].copy_(value)

    @contextmanager
    def swapped_into(self, module: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into ``module`` (restoring the live ones afterwards)."""
        live = {name: value.detach().clone() for name, value in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        try:
            yield module
        finally:
            module.load_state_dict(live)
