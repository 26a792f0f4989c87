"""StreamingDiffusionPolicy: an action buffer whose noise level rises along the horizon (Streaming DP).

The buffer holds the next ``Hb = H - To + 1`` actions (index 0 = this tick). With ``N = k Hb`` levels of a
Karras grid, entry ``j`` sits at grid index ``N - k (j + 1)`` at the start of a tick. Each tick runs ``k``
per-entry Euler steps (every entry moves ``k`` levels down), so entry 0 becomes clean and is executed, the
buffer shifts, and fresh noise at ``sigma_max`` enters at the end: ``k = N / Hb`` network evaluations per
tick instead of ``N`` per chunk. The denoiser therefore takes one noise level per timestep: the network gets a
per-timestep noise embedding, and training mixes staircase noise levels (at a random phase), independent
per-timestep levels and ordinary shared levels (so ``predict_chunk`` can also sample a whole chunk).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from diffctl.kernels import schedules
from diffctl.kernels.denoisers import PerStepEDMDenoiser
from diffctl.kernels.samplers import sample
from diffctl.kernels.schedules import karras_at
from diffctl.nets import PerStepMLP
from diffctl.policies.base import eval_mode, param_device
from diffctl.policies.diffusion import (
    EDM_NOISE_SCALE,
    ChunkDenoiserNet,
    DiffusionPolicy,
    DiffusionPolicyConfig,
    build_observation_encoder,
    history_tensor,
    split_batch,
    split_history,
)
from diffctl.policies.fused import (
    cached_graph,
    constant_sigma,
    history_parts,
    trace_frozen,
)
from diffctl.policies.runner import StreamRunner

STREAM_BACKBONE = {"hidden": 256, "depth": 3, "embed_dim": 16}


@dataclass
class StreamingPolicyConfig(DiffusionPolicyConfig):
    """Settings of a ``StreamingDiffusionPolicy``; the backbone is always the per-timestep MLP."""

    section: ClassVar[str] = "StreamingDiffusionPolicy"

    backbone: Literal["per_step_mlp"] = "per_step_mlp"  # type: ignore[assignment]
    """Always the per-timestep MLP (each buffer entry has its own noise level)."""
    backbone_kwargs: dict[str, Any] = field(default_factory=lambda: dict(STREAM_BACKBONE))
    """hidden, depth, embed_dim of the per-timestep MLP (missing keys take the defaults)."""
    steps_per_tick: int = 1
    """k: NFE per control tick; the buffer has N = k * (H - To + 1) noise levels."""
    staircase_prob: float = 0.6
    """Share of training samples with staircase per-timestep noise levels."""
    independent_prob: float = 0.2
    """Share of training samples with independent per-timestep levels (the rest share one level)."""

    def validate(self) -> None:
        super().validate()
        self.backbone_kwargs = {**STREAM_BACKBONE, **self.backbone_kwargs}
        if self.steps_per_tick < 1:
            raise ValueError(f"steps_per_tick must be a positive integer, got {self.steps_per_tick!r}")
        p, q = self.staircase_prob, self.independent_prob
        if not (p >= 0 and q >= 0 and p + q <= 1):
            raise ValueError(f"need staircase_prob, independent_prob >= 0 with sum <= 1; got {p}, {q}")
        if self.parameterization != "edm":
            raise ValueError(
                "StreamingDiffusionPolicy needs parameterization='edm' (continuous per-step sigma)"
            )


class StreamingDiffusionPolicy(DiffusionPolicy):
    """Streaming Diffusion Policy; ``steps_per_tick`` = k NFE per control tick (see the module docstring)."""

    config_class: ClassVar[type[DiffusionPolicyConfig]] = StreamingPolicyConfig

    def __init__(self, obs_dim: int, action_dim: int, **settings: Any) -> None:
        super().__init__(obs_dim, action_dim, **settings)
        self.steps_per_tick = self.config.steps_per_tick

    @property
    def buffer_len(self) -> int:
        """Hb = H - To + 1: the actions from the current step on."""
        return self.horizon - self.n_obs_steps + 1

    def build_network(self) -> nn.Module:
        """Observation encoder (seeded by ``seed``) + per-timestep MLP (seeded by ``seed + 1``)."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            enc = build_observation_encoder(cfg)
            torch.manual_seed(cfg.seed + 1)
            cond_dim = enc.out_dim + (cfg.goal_dim + 1 if cfg.goal_dim else 0)
            net = PerStepMLP(cfg.action_dim, self.buffer_len, cond_dim, **cfg.backbone_kwargs)
        return ChunkDenoiserNet(enc, net, cfg.goal_dim, EDM_NOISE_SCALE)

    @property
    def levels(self) -> int:
        """Number of noise levels N = steps_per_tick * buffer length."""
        return self.steps_per_tick * self.buffer_len

    def denoiser(self) -> nn.Module:
        return PerStepEDMDenoiser(self.network, self.config.sigma_data)

    def stream_sigmas(self) -> torch.Tensor:
        """The N-level Karras grid of the buffer (descending, ends in 0)."""
        return self._stream_grid().clone()

    def _stream_grid(self) -> torch.Tensor:
        cfg = self.sampler
        key = ("stream_sigmas", self.levels, cfg.sigma_min, cfg.sigma_max, cfg.rho)
        return self._cached(
            key, lambda: schedules.karras(self.levels, cfg.sigma_min, cfg.sigma_max, cfg.rho).float()
        )

    def _tick_steps(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-entry ``(sigma (1, Hb), next/current ratio (1, Hb, 1))`` of each of the k steady-state Euler
        steps of a tick (fixed by the grid, so computed once)."""
        grid = self._stream_grid()

        def build() -> list[tuple[torch.Tensor, torch.Tensor]]:
            start = self.levels - self.steps_per_tick * (torch.arange(self.buffer_len) + 1)
            return [self._levels(start + r, grid) for r in range(self.steps_per_tick)]

        return self._cached(("tick_steps", id(grid)), build)

    @staticmethod
    def _levels(idx: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = grid[idx].reshape(1, -1)
        s1 = grid[(idx + 1).clamp(max=len(grid) - 1)].reshape(1, -1)
        return s0, (s1 / s0).unsqueeze(-1)

    # ----- training ------------------------------------------------------------------------------------
    def _train_sigmas(self, bsz: int, device: torch.device) -> torch.Tensor:
        """Per-timestep sigmas (B, Hb): staircase at a random phase, independent, or shared log-normal."""
        hp, cfg = self.config, self.sampler
        hb, k, n = self.buffer_len, self.steps_per_tick, self.levels

        def lognormal(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, device=device) * hp.p_std + hp.p_mean).exp()

        u = torch.rand(bsz, 1, device=device) * k
        j = torch.arange(hb, device=device).reshape(1, -1)
        stair = karras_at(n - k * (j + 1) + u, n, cfg.sigma_min, cfg.sigma_max, cfg.rho)
        kind = torch.rand(bsz, 1, device=device)
        pick_stair = kind < hp.staircase_prob
        pick_ind = (kind >= hp.staircase_prob) & (kind < hp.staircase_prob + hp.independent_prob)
        shared = lognormal(bsz, 1).expand(bsz, hb)
        return torch.where(pick_stair, stair, torch.where(pick_ind, lognormal(bsz, hb), shared))

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Per-timestep EDM loss on the buffer part ``actions[:, To-1:]`` of each window."""
        a, raw, mask = split_batch(self, batch)
        bsz, device, start = a.shape[0], a.device, self.n_obs_steps - 1
        a = a[:, start:]
        cond = self.network.condition(*raw)
        sigma = self._train_sigmas(bsz, device)
        sd = self.config.sigma_data
        denoised = self.denoiser()(a + sigma.unsqueeze(-1) * torch.randn_like(a), sigma, cond)
        weight = ((sigma**2 + sd**2) / (sigma * sd) ** 2).unsqueeze(-1)
        m = mask[:, start:]
        loss = (weight * (denoised - a) ** 2 * m).sum() / (m.sum() * self.action_dim).clamp_min(1.0)
        return loss, {"loss": float(loss.detach())}

    # ----- inference -----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_chunk(
        self, obs_history: Any, *, noise: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Whole chunks with one shared noise level (the policy's sampler); the ``To - 1`` past entries repeat
        the first planned action. ``prefix``/``init`` are not supported."""
        if kwargs.get("prefix") is not None or kwargs.get("init") is not None:
            raise ValueError("StreamingDiffusionPolicy.predict_chunk does not take prefix or init")
        hist = history_tensor(self, obs_history)
        device = param_device(self.network)
        shape = (split_history(self, hist)[0].shape[0], self.buffer_len, self.action_dim)
        if noise is None:
            noise = torch.randn(shape, generator=self._generator)
        noise = noise.to(device, torch.float32)
        if noise.shape[1] == self.horizon:
            noise = noise[:, self.n_obs_steps - 1 :]
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        with eval_mode(self.network):
            sigmas = self.sigmas().to(device)
            x0 = sample(
                self.conditioned_denoiser(hist), noise * sigmas[0], sigmas, solver=self.sampler.solver,
                generator=self._generator, **self.sampler.options,
            )  # fmt: skip
        buf = self.normalizer("action").unnormalize(x0.clamp(-1.0, 1.0))
        return torch.cat([buf[:, :1].expand(-1, self.n_obs_steps - 1, -1), buf], dim=1)

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: empty history and buffer (the first tick fills it, about N NFE)."""
        self.runner = StreamRunner(self)
        if seed is not None:
            self.seed(seed)

    @property
    def nfe(self) -> int:
        """Network evaluations since ``reset``."""
        return self.runner.nfe

    @property
    def ticks(self) -> int:
        """Control ticks since ``reset``."""
        return self.runner.ticks

    @staticmethod
    def _euler(denoise: Any, x: torch.Tensor, levels: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Move every entry one level down its grid (1 NFE, counted by the caller): ``levels`` =
        ``_levels(idx, grid)`` (entries whose next index equals the current one stay)."""
        s0, ratio = levels
        x0 = denoise(x, s0.expand(x.shape[0], -1))
        return x0 + ratio * (x - x0)

    def act(self, obs: Any) -> np.ndarray:
        """One observation -> one action with ``steps_per_tick`` NFE (about N on the first tick)."""
        return self.runner.act(obs)

    def advance(self, x: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
        """The next tick's buffer: the moved one without its executed head, with standard-normal ``fresh``
        (B, 1, Da) at the top noise level appended."""
        return torch.cat([x[:, 1:], fresh * self._stream_grid()[0]], dim=1)

    def fill_buffer(self, denoise: Any) -> torch.Tensor:
        """The first buffer: pure noise walked down to the staircase of levels (N - k NFE)."""
        grid, n, k, hb = self._stream_grid(), self.levels, self.steps_per_tick, self.buffer_len
        start = n - k * (torch.arange(hb) + 1)
        x = torch.randn((1, hb, self.action_dim), generator=self._generator) * grid[0]
        for i in range(n - k):
            idx = torch.minimum(torch.full_like(start, i), start)
            moved = self._euler(denoise, x, self._levels(idx, grid))
            x = torch.where((idx < start).reshape(1, -1, 1), moved, x)
        return x

    def tick(self, denoise: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The k steady-state Euler steps of a tick: ``(raw first action (B, Da), moved buffer)``."""
        for levels in self._tick_steps():
            x = self._euler(denoise, x, levels)
        return self.normalizer("action").unnormalize(x[:, 0].clamp(-1.0, 1.0)), x

    def fused_tick(
        self, hist: Any, buffer: torch.Tensor, fresh: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tick`` and ``advance`` through one frozen graph of ``(raw history, buffer, fresh noise)``
        (``diffctl.policies.fused``; a history with cameras enters as its parts): ``(raw first action (B,
        Da), next buffer)``."""
        names, parts = history_parts(hist)
        shapes = tuple(tuple(p.shape) for p in parts)
        key = ("stream_tick", names, shapes, tuple(buffer.shape), id(self._tick_steps()), buffer.device)

        def tick(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            n = len(parts)
            h = dict(zip(names, args[:n], strict=True)) if names else args[0]
            action, moved = self.tick(constant_sigma(self.conditioned_denoiser(h)), args[n])
            return action, self.advance(moved, args[n + 1])

        inputs = (*parts, buffer, fresh)
        graph = cached_graph(self, key, lambda: trace_frozen(tick, self.network, inputs, "streaming tick"))
        return graph(*inputs)
