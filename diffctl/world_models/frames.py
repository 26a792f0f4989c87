"""FrameWorldModel: imagine camera frames (DIAMOND's recipe on the shared kernels).

The next frame is denoised by a 2-D U-Net (``nets.unet2d``, EDM preconditioning) that sees the last
``context`` frames as extra input channels and their actions as a vector added to the noise embedding;
training adds a little noise to the context frames (DIAMOND's augmentation against compounding error).
Imagination is autoregressive, a few Euler steps per frame (3 by default). A small CNN predicts each step's
reward from the frame before and after it and the action. Frames are uint8 ``(H, W, 3)``, resized once to
``frame_size``.

``rollout(frames, actions)`` takes the last frames ``(B, H, W, 3)`` or ``(B, k, H, W, 3)`` (``past_actions``
``(B, k - 1, Da)`` between them when known) and actions ``(B, T, Da)``; it returns ``observations``
``(B, T, S, S, 3)`` uint8 (the frame after each action) and ``rewards`` ``(B, T)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffctl.core.config import Config, Configurable
from diffctl.core.modules import eval_mode, param_device
from diffctl.core.persistence import agent_config, construct, read_agent_config, restore, write_agent_dir
from diffctl.core.sampler import SamplerConfig, refuse_fused
from diffctl.core.seeding import SeededSampler
from diffctl.datasets import images
from diffctl.datasets.store import EpisodeStore
from diffctl.kernels import schedules
from diffctl.kernels.denoisers import EDMDenoiser
from diffctl.kernels.losses import edm_loss
from diffctl.kernels.samplers import sample as run_sampler
from diffctl.nets.unet2d import UNet2d

VERSION = 1
DEFAULT_SAMPLER = {"solver": "euler", "steps": 3, "sigma_max": 5.0, "sigma_min": 2e-3, "rho": 7.0}
"""DIAMOND's sampler: 3 Euler steps on a Karras grid from sigma 5."""


@dataclass
class FrameWorldModelConfig(Config):
    """Settings of ``FrameWorldModel``."""

    section: ClassVar[str] = "FrameWorldModel"

    action_dim: int = 1
    """Action width; read off the data."""
    image_key: str = "image"
    """Store key of the camera frames."""
    frame_size: int = 64
    """Side the frames are resized to (a multiple of 4)."""
    context: int = 4
    """Frames (and their actions) the next frame is predicted from."""
    unet_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"base": 32, "mults": [1, 2, 2], "blocks": 1, "attn_res": []}
    )
    """Options of ``nets.unet2d.UNet2d`` (channels, in_channels and extra_dim are set by the model)."""
    sigma_data: float = 0.5
    """EDM data standard deviation (frames in [-1, 1])."""
    p_mean: float = -0.4
    """Mean of ln(sigma) in training (DIAMOND's)."""
    p_std: float = 1.2
    """Standard deviation of ln(sigma) in training."""
    context_noise: float = 0.1
    """Largest noise level added to the context frames in training (each sample draws one in [0, this])."""
    reward_weight: float = 1.0
    """Weight of the reward head's squared error in the loss."""
    held_out: float = 0.1
    """Share of episodes (the last ones) kept out of training, for validation and the benchmark."""
    seed: int = 0
    """Seed of the initial weights."""

    def validate(self) -> None:
        if self.frame_size < 8 or self.frame_size % 4:
            raise ValueError(
                f"FrameWorldModel.frame_size must be a multiple of 4 >= 8, got {self.frame_size}"
            )
        if self.context < 1 or self.action_dim < 1:
            raise ValueError(f"FrameWorldModel needs context >= 1 and action_dim >= 1, got {self.context}")
        if not 0 <= self.held_out < 1 or self.context_noise < 0:
            raise ValueError("FrameWorldModel needs held_out in [0, 1) and context_noise >= 0")


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float ``(..., 3, H, W)`` in [-1, 1]."""
    return images.to_float(frames.movedim(-1, -3))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float ``(..., 3, H, W)`` in [-1, 1] -> uint8 ``(..., H, W, 3)``."""
    return images.to_uint8(x).movedim(-3, -1)


def as_frames(frames: Any) -> torch.Tensor:
    """``frames`` as a uint8 ``(N, H, W, 3)`` tensor, else a ValueError saying what they are."""
    frames = torch.as_tensor(np.asarray(frames))
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    return frames


def resize_frames(frames: Any, size: int, batch: int = 1024) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` frames area-resized to ``(N, size, size, 3)`` uint8 (in blocks of ``batch``)."""
    frames = as_frames(frames)
    if frames.shape[1:3] == (size, size):
        return frames.contiguous()
    out = []
    for i in range(0, len(frames), batch):
        x = frames[i : i + batch].permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(size, size), mode="area")
        out.append(y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(out).contiguous()


class FrameWindows:
    """One training example per step that has a next frame in its episode: the ``context`` frames up to it
    (the episode's first frame repeated before its start), their actions (zeros before the start), the next
    frame and the step's reward. The last ``held_out`` share of episodes is kept apart (``validation``).
    Frames keep their stored size unless ``frame_size`` is given (the model's ``fit`` resizes them once)."""

    def __init__(self, store: EpisodeStore, image_key: str = "image", frame_size: int | None = None) -> None:
        for key in (image_key, "actions", "rewards"):
            if key not in store.keys:
                raise ValueError(
                    f"a frame world model needs {key!r} in the dataset; {store.path} has {store.keys}"
                )
        frames = store.array(image_key)
        self.frames = resize_frames(frames, frame_size) if frame_size else as_frames(frames)
        self.actions = torch.as_tensor(np.asarray(store.array("actions"), np.float32)).reshape(
            len(self.frames), -1
        )
        self.rewards = torch.as_tensor(np.asarray(store.array("rewards"), np.float32)).reshape(-1)
        ends = np.asarray(store.episode_ends, np.int64)
        self.episode_starts = np.concatenate([[0], ends[:-1]])
        self.episode_ends = ends
        self.context = 1
        self.hold_out(0.0)

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    def hold_out(self, share: float) -> None:
        """Keep the last ``share`` of the episodes (at least one when share > 0) out of ``len`` / batches."""
        n = len(self.episode_ends)
        held = min(n - 1, max(1, round(share * n))) if share > 0 and n > 1 else 0
        steps = [np.arange(s, e - 1) for s, e in zip(self.episode_starts, self.episode_ends, strict=True)]
        self.train_steps = np.concatenate(steps[: n - held]) if n - held else np.zeros(0, np.int64)
        self.validation_episodes = list(range(n - held, n))

    def __len__(self) -> int:
        return int(self.train_steps.size)

    def window(self, steps: np.ndarray, context: int) -> dict[str, torch.Tensor]:
        """The examples of global ``steps`` with ``context`` frames."""
        starts = self.episode_starts[np.searchsorted(self.episode_ends, steps, side="right")]
        idx = steps[:, None] + np.arange(1 - context, 1)
        before = idx < starts[:, None]
        frames = self.frames[np.maximum(idx, starts[:, None])]
        actions = self.actions[np.maximum(idx, starts[:, None])]
        actions[torch.as_tensor(before)] = 0.0
        return {
            "context": frames, "past_actions": actions, "next": self.frames[steps + 1],
            "rewards": self.rewards[steps],
        }  # fmt: skip

    def get_batch(self, indices: Any) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices.cpu() if torch.is_tensor(indices) else indices, np.int64).reshape(-1)
        return self.window(self.train_steps[idx % max(len(self), 1)], self.context)


class FrameDenoiserNet(nn.Module):
    """The U-Net with the context frames as input channels and their actions as the extra embedding."""

    def __init__(self, frame_size: int, context: int, action_dim: int, **unet_kwargs: Any) -> None:
        super().__init__()
        self.unet = UNet2d(
            3, frame_size, in_channels=3 * (context + 1), extra_dim=context * action_dim, **unet_kwargs
        )

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        frames, actions = cond
        return self.unet(torch.cat([x, frames], dim=1), c_noise, extra=actions)


class RewardNet(nn.Module):
    """Reward of a step from the frame before it, the frame after it and the action."""

    def __init__(self, frame_size: int, action_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(6, 16, 4, 2, 1), nn.SiLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.SiLU(),
            nn.Conv2d(32, 32, 4, 2, 1), nn.SiLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Linear(32 * 16 + action_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, before: torch.Tensor, after: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        feats = self.conv(torch.cat([before, after], dim=1))
        return self.head(torch.cat([feats, action], dim=1))[:, 0]


class FrameNetworks(nn.Module):
    """The denoiser and the reward head, saved together."""

    def __init__(self, cfg: FrameWorldModelConfig) -> None:
        super().__init__()
        self.denoiser = FrameDenoiserNet(cfg.frame_size, cfg.context, cfg.action_dim, **cfg.unet_kwargs)
        self.reward = RewardNet(cfg.frame_size, cfg.action_dim)


class FrameWorldModel(Configurable, SeededSampler):
    """See the module docstring."""

    config_class: ClassVar[type[FrameWorldModelConfig]] = FrameWorldModelConfig
    reads_frames: ClassVar[bool] = True
    """The train pipeline lets it train on tasks with ``image_keys`` (its dataset reads the frames)."""
    task: str | None = None

    def __init__(self, *, sampler: SamplerConfig | dict | None = None, **settings: Any) -> None:
        self.config = cfg = FrameWorldModelConfig.from_dict(settings)
        if isinstance(sampler, SamplerConfig):
            self.sampler = sampler
        else:
            self.sampler = SamplerConfig.from_dict({**DEFAULT_SAMPLER, **dict(sampler or {})})
        refuse_fused(self.sampler, "FrameWorldModel")
        self.action_dim, self.context, self.frame_size = cfg.action_dim, cfg.context, cfg.frame_size
        self.normalizers: dict[str, Any] = {}  # frames are scaled to [-1, 1], actions used as they are
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.network: nn.Module = FrameNetworks(cfg)
        self.seed(None)

    # ----- pipeline hooks ------------------------------------------------------------------------------
    @classmethod
    def make_dataset(cls, store: EpisodeStore, task: Any) -> FrameWindows:
        keys = list(task.get("image_keys") or ["image"])
        return FrameWindows(store, str(keys[0]))

    @classmethod
    def data_dims(cls, dataset: FrameWindows) -> dict[str, int]:
        return {"action_dim": dataset.action_dim}

    def fit(self, dataset: FrameWindows, mode: str = "limits") -> None:
        """Resize the data's frames to this model's size, set its context and hold out validation episodes."""
        if dataset.frames.shape[1] != self.frame_size:
            dataset.frames = resize_frames(dataset.frames, self.frame_size)
        dataset.context = self.context
        dataset.hold_out(self.config.held_out)

    def to(self, device: Any) -> FrameWorldModel:
        self.network.to(device)
        return self

    def denoiser(self) -> EDMDenoiser:
        return EDMDenoiser(self.network.denoiser, self.config.sigma_data)

    # ----- training ------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """EDM loss of the next frame given noise-augmented context frames, plus the reward head's error."""
        cfg = self.config
        ctx = to_unit(batch["context"])  # (B, k, 3, S, S)
        bsz = ctx.shape[0]
        level = torch.rand(bsz, 1, 1, 1, 1, device=ctx.device) * cfg.context_noise
        noisy_ctx = (ctx + level * torch.randn_like(ctx)).flatten(1, 2)
        actions = batch["past_actions"].float().flatten(1)
        target = to_unit(batch["next"])
        frame_loss = edm_loss(
            self.denoiser(), target, (noisy_ctx, actions), P_mean=cfg.p_mean, P_std=cfg.p_std
        )
        pred = self.network.reward(ctx[:, -1], target, batch["past_actions"][:, -1].float())
        reward_loss = F.mse_loss(pred, batch["rewards"].float())
        loss = frame_loss.mean() + cfg.reward_weight * reward_loss
        parts = {"loss": loss, "frame_loss": frame_loss.mean(), "reward_loss": reward_loss}
        return loss, {k: float(v.detach()) for k, v in parts.items()}

    # ----- imagination ---------------------------------------------------------------------------------
    def grid(self) -> torch.Tensor:
        s = self.sampler
        return schedules.karras(s.steps, s.sigma_min, s.sigma_max, s.rho).float()

    @torch.no_grad()
    def next_frame(
        self, context: torch.Tensor, past_actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context ``(B, k, 3, S, S)`` in [-1, 1] and its actions ``(B, k, Da)`` -> the next frame (same
        units) and the reward of the last action."""
        device = param_device(self.network)
        sigmas = self.grid().to(device)
        gen = generator if generator is not None else self.generator
        noise = torch.randn((len(context), 3, self.frame_size, self.frame_size), generator=gen).to(device)
        cond = (context.flatten(1, 2), past_actions.flatten(1))
        model = self.denoiser()
        with eval_mode(self.network):
            x = run_sampler(
                lambda x, s: model(x, s, cond), noise * sigmas[0], sigmas, solver=self.sampler.solver,
                generator=gen, **self.sampler.options,
            )  # fmt: skip
            x = x.clamp(-1, 1)
            reward = self.network.reward(context[:, -1], x, past_actions[:, -1])
        return x, reward

    def check_frames(self, frames: Any) -> torch.Tensor:
        """``(B, H, W, 3)`` or ``(B, k, H, W, 3)`` uint8 -> ``(B, k, 3, S, S)`` in [-1, 1] (earlier frames
        repeat the first when fewer than ``context`` are given)."""
        f = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
        if f.dtype != torch.uint8 or f.ndim not in (4, 5) or f.shape[-1] != 3:
            raise ValueError(
                f"frames must be uint8 (B, H, W, 3) or (B, k, H, W, 3), got {f.dtype} {tuple(f.shape)}"
            )
        if f.ndim == 4:
            f = f[:, None]
        b, k = f.shape[:2]
        if k > self.context:
            f, k = f[:, -self.context :], self.context
        f = resize_frames(f.reshape(b * k, *f.shape[2:]), self.frame_size).reshape(
            b, k, self.frame_size, self.frame_size, 3
        )
        if k < self.context:
            f = torch.cat([f[:, :1].expand(-1, self.context - k, -1, -1, -1), f], dim=1)
        return to_unit(f).to(param_device(self.network))

    @torch.no_grad()
    def rollout(
        self,
        obs: Any,
        actions: Any = None,
        *,
        past_actions: Any = None,
        policy: Any = None,
        horizon: int | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Imagine the frames after ``actions`` (B, T, Da) from the frames ``obs`` (module docstring)."""
        if policy is not None:
            raise ValueError(
                "FrameWorldModel imagines frames under given actions; closed-loop rollouts with a policy "
                "(which also needs the state and goal) are not supported"
            )
        if actions is None:
            raise ValueError("rollout needs actions= (B, T, Da)")
        ctx = self.check_frames(obs)
        bsz = ctx.shape[0]
        a = torch.as_tensor(
            np.asarray(actions, np.float32) if not torch.is_tensor(actions) else actions
        ).float()
        if a.ndim != 3 or a.shape[0] != bsz or a.shape[2] != self.action_dim or a.shape[1] < 1:
            raise ValueError(
                f"actions must have shape ({bsz}, T >= 1, {self.action_dim}), got {tuple(a.shape)}"
            )
        if not torch.isfinite(a).all():
            raise ValueError("actions hold NaN or inf")
        past = torch.zeros(bsz, self.context - 1, self.action_dim)
        if past_actions is not None:
            given = torch.as_tensor(np.asarray(past_actions, np.float32)).reshape(bsz, -1, self.action_dim)
            take = min(given.shape[1], self.context - 1)
            if take:
                past[:, -take:] = given[:, -take:]
        device = ctx.device
        hist_a = torch.cat([past.to(device), a[:, :1].to(device)], dim=1)
        frames, rewards = [], []
        for t in range(a.shape[1]):
            if t:
                hist_a = torch.cat([hist_a[:, 1:], a[:, t : t + 1].to(device)], dim=1)
            nxt, reward = self.next_frame(ctx, hist_a, generator)
            frames.append(nxt)
            rewards.append(reward)
            ctx = torch.cat([ctx[:, 1:], nxt[:, None]], dim=1)
        observations = to_uint8(torch.stack(frames, 1)).cpu()
        return {"observations": observations, "rewards": torch.stack(rewards, 1).cpu(), "actions": a}

    # ----- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_agent_dir(path, agent_config(self, VERSION), self.network.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> FrameWorldModel:
        """Load a saved model; ``overrides`` change sampler fields (``solver``, ``steps``, ...)."""
        config, state = read_agent_config(path, cls.__name__, VERSION, keys=("hyperparameters", "sampler"))
        try:
            sampler = SamplerConfig.from_dict({**config["sampler"], **overrides})
        except ValueError as err:
            raise ValueError(f"{path}/config.json: {err}") from err
        model = construct(cls, path, sampler=sampler, **config["hyperparameters"])
        restore(model, config, state, path).network.eval()
        return model
