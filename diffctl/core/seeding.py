"""``SeededSampler``: the sampling-noise generator of an agent, so ``act`` is reproducible from ``reset``."""

from __future__ import annotations

from typing import Any

import torch


class SeededSampler:
    """The sampling-noise generator of an agent (``seed``), kept across pickling (worker processes, copies).

    ``torch.Generator`` cannot be pickled, so its state travels as a tensor under ``_generator_state``.
    """

    _generator: torch.Generator | None

    @property
    def generator(self) -> torch.Generator | None:
        """The generator sampling noise is drawn from (None: torch's global RNG)."""
        return self._generator

    def seed(self, seed: int | None) -> None:
        """Seed the generator that draws sampling noise (None: torch's global RNG)."""
        self._generator = None if seed is None else torch.Generator().manual_seed(int(seed))

    def start_noise(
        self, shape: tuple[int, ...], noise: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """Standard-normal start noise of ``shape`` on ``device`` (float32): ``noise`` when given
        (shape-checked), else drawn on the CPU from this agent's generator so results do not depend on the
        device."""
        if noise is None:
            noise = torch.randn(shape, generator=self._generator)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        return noise.to(device, torch.float32)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_cache", None)
        if "_generator" in state:
            gen = state.pop("_generator")
            state["_generator_state"] = None if gen is None else gen.get_state()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        has_generator = "_generator_state" in state
        gen_state = state.pop("_generator_state", None)
        self.__dict__.update(state)
        if has_generator:
            self._generator = None
            if gen_state is not None:
                self._generator = torch.Generator()
                self._generator.set_state(gen_state)
