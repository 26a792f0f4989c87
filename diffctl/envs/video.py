"""Rollout videos (imageio: mp4 via ffmpeg, or gif) and maze trajectory plots (matplotlib, Agg)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffctl.atomic import atomic_path

VIDEO_SUFFIXES = (".mp4", ".gif")


def check_video_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"video path {p} must end in one of {', '.join(VIDEO_SUFFIXES)}")
    return p


def video_backend(path: str | os.PathLike[str]) -> Any:
    """``imageio.v2`` when it can write ``path``'s format (.gif: imageio; .mp4: imageio and imageio-ffmpeg);
    otherwise an ImportError naming what to install."""
    p = check_video_path(path)
    mp4 = p.suffix.lower() == ".mp4"
    try:
        import imageio.v2 as imageio

        if mp4:
            import imageio_ffmpeg  # noqa: F401  (imageio's ffmpeg plugin writes the libx264 mp4)
    except ImportError as err:
        need = "imageio and imageio-ffmpeg" if mp4 else "imageio"
        raise ImportError(f"{p.suffix} videos need {need} (pip install diffctl[sim]); {err}") from err
    return imageio


def write_video(path: str | os.PathLike[str], frames: Sequence[np.ndarray], fps: int = 30) -> Path:
    """Write RGB frames (H, W, 3 uint8) to ``path`` (.mp4 or .gif) atomically."""
    imageio = video_backend(path)
    p = check_video_path(path)
    if len(frames) == 0:
        raise ValueError(f"no frames to write to {p}")
    with atomic_path(p) as tmp:
        if p.suffix.lower() == ".gif":
            imageio.mimsave(tmp, [np.asarray(f) for f in frames], duration=1.0 / fps, loop=0)
        else:
            with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1) as writer:
                for frame in frames:
                    writer.append_data(np.asarray(frame))
    return p


def plot_maze_trajectories(
    path: str | os.PathLike[str],
    task: str,
    trajectories: Sequence[np.ndarray],
    goals: Sequence[np.ndarray],
    successes: Sequence[bool] | None = None,
    title: str | None = None,
) -> Path:
    """Plot (T, 2) xy trajectories over the maze walls; green = reached the goal, red = not."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from diffctl.envs.maze import maze_layout

    lay = maze_layout(task)
    fig, ax = plt.subplots(figsize=(0.6 * lay.cols + 1, 0.6 * lay.rows + 1), dpi=100)
    half = lay.scale / 2
    for r, c in np.argwhere(lay.grid == 1):
        x, y = lay.cell_to_xy((r, c))
        ax.add_patch(Rectangle((x - half, y - half), lay.scale, lay.scale, color="0.35"))
    flags: Sequence[Any] = successes if successes is not None else [None] * len(trajectories)
    for traj, goal, ok in zip(trajectories, goals, flags, strict=True):
        xy = np.asarray(traj)
        color = "tab:blue" if ok is None else ("tab:green" if ok else "tab:red")
        ax.plot(xy[:, 0], xy[:, 1], color=color, lw=1.0, alpha=0.7)
        ax.plot(xy[0, 0], xy[0, 1], "o", color=color, ms=3)
        ax.plot(goal[0], goal[1], "*", color="gold", mec="k", ms=10)
    ax.set_xlim(-lay.cols * half, lay.cols * half)
    ax.set_ylim(-lay.rows * half, lay.rows * half)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or task, fontsize=9)
    p = Path(path)
    try:
        with atomic_path(p) as tmp:
            fig.savefig(tmp, bbox_inches="tight", format=p.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return p
