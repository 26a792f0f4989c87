"""Scoring a ``FrameWorldModel`` against the frames the simulator recorded: open-loop imagination from
held-out episodes under their logged actions, per-frame RMSE at several horizons beside the
copy-the-last-frame baseline, imagined frames per second, and a side-by-side video (real | imagined)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffctl.world_models.frames import FrameWindows, FrameWorldModel


def held_out_starts(data: FrameWindows, horizon: int, count: int, seed: int = 0) -> np.ndarray:
    """Up to ``count`` global steps of the held-out episodes with ``horizon`` recorded frames after them."""
    steps = [
        np.arange(data.episode_starts[e], data.episode_ends[e] - horizon) for e in data.validation_episodes
    ]
    pool = np.concatenate(steps) if steps else np.zeros(0, np.int64)
    if pool.size == 0:
        raise ValueError(f"no held-out episode has more than {horizon} frames to compare against")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(count, pool.size), replace=False))


def imagine_recorded(
    model: FrameWorldModel, data: FrameWindows, starts: np.ndarray, horizon: int, seed: int = 0
) -> dict[str, Any]:
    """From each start's recorded context, imagine ``horizon`` frames under the recorded actions. Returns the
    real and imagined frames ``(B, T, S, S, 3)`` uint8, the last context frame, and real and predicted
    rewards."""
    window = data.window(starts, model.context)
    steps = starts[:, None] + np.arange(horizon)
    actions = data.actions[steps]
    out = model.rollout(
        window["context"], actions, past_actions=window["past_actions"][:, :-1],
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return {
        "real": data.frames[steps + 1], "imagined": out["observations"], "last": window["context"][:, -1],
        "rewards": data.rewards[steps], "predicted_rewards": out["rewards"],
    }  # fmt: skip


def frame_errors(run: dict[str, Any], horizons: Sequence[int]) -> dict[str, dict[str, float]]:
    """Per-frame RMSE (pixel values in [0, 1]) of the model and of copying the last context frame, and the
    reward MAE, at each horizon (1-based)."""
    real = run["real"].float() / 255
    imagined = run["imagined"].float() / 255
    copy = run["last"].float()[:, None] / 255
    out = {}
    for h in horizons:
        out[str(h)] = {
            "model_rmse": float((imagined[:, h - 1] - real[:, h - 1]).pow(2).mean().sqrt()),
            "copy_rmse": float((copy[:, 0] - real[:, h - 1]).pow(2).mean().sqrt()),
            "reward_mae": float((run["predicted_rewards"][:, h - 1] - run["rewards"][:, h - 1]).abs().mean()),
        }
    return out


def frames_per_second(model: FrameWorldModel, data: FrameWindows, batch: int, steps: int = 4) -> float:
    """Imagined frames per second at ``batch`` (best of two timed rollouts after a warm-up)."""
    frames = data.frames[:batch]
    if len(frames) < batch:
        frames = frames[np.arange(batch) % len(frames)]
    actions = torch.zeros(batch, steps, model.action_dim)
    model.rollout(frames, actions[:, :1])
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        model.rollout(frames, actions, generator=torch.Generator().manual_seed(0))
        best = min(best, time.perf_counter() - start)
    return batch * steps / best


def write_comparison_video(
    path: str | os.PathLike[str], run: dict[str, Any], index: int = 0, fps: int = 8
) -> Path:
    """Real (left) and imagined (right) frames of rollout ``index`` side by side, upscaled 4x."""
    from diffctl.envs.video import write_video

    real, imagined = run["real"][index].numpy(), run["imagined"][index].numpy()
    gap = np.full((real.shape[1], 2, 3), 255, np.uint8)
    pairs = zip(real, imagined, strict=True)
    frames = [np.concatenate([r, gap, m], axis=1).repeat(4, 0).repeat(4, 1) for r, m in pairs]
    return write_video(path, frames, fps=fps)
