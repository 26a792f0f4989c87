"""Dataset generators: maze2d (scripted waypoint expert), Fetch (scripted arm experts), locomotion (SAC,
D4RL recipe) and images (digits, shapes, simulator frames: ``diffctl.datasets.images``).

``generate(task, out, episodes=None, seed=0, force=False, **options)`` writes an ``EpisodeStore`` at ``out``
with a dataset card in ``store.attrs`` and returns the opened store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffctl.datasets.generators.catalog import (
    DATASETS,
    FETCH_DATASETS,
    LOCOMOTION_DATASETS,
    LOCOMOTION_KINDS,
    LOCOMOTION_TASKS,
    MAZE_DATASETS,
)

__all__ = [
    "DATASETS",
    "FETCH_DATASETS",
    "LOCOMOTION_DATASETS",
    "LOCOMOTION_KINDS",
    "LOCOMOTION_TASKS",
    "MAZE_DATASETS",
    "generate",
]


def generate(
    task: str,
    out: str | os.PathLike[str],
    episodes: int | None = None,
    seed: int = 0,
    force: bool = False,
    **options: Any,
) -> Any:
    """Generate dataset ``task`` (e.g. ``maze2d-umaze``, ``hopper-medium``) into an EpisodeStore at ``out``.

    An existing ``out`` is refused unless ``force``. Options go to the task's generator (maze:
    ``size="small"|"d4rl"``, ``steps``, ``action_noise``, ...; locomotion: ``budget="small"|"d4rl"``, ...).
    """
    from diffctl.datasets.images import IMAGE_DATASETS, generate_images

    if task in IMAGE_DATASETS:
        if episodes is not None:
            raise ValueError(f"image dataset {task!r} has no episodes; use n= for its number of images")
        return generate_images(task, out, seed=seed, force=force, **options)
    if task not in DATASETS:
        valid = ", ".join((*DATASETS, *IMAGE_DATASETS))
        raise ValueError(f"no generator for {task!r}; valid datasets: {valid}")
    if episodes is not None and int(episodes) < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    path = Path(out)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists (pass force=True / --force to replace it)")
    if task in FETCH_DATASETS:
        from diffctl.datasets.generators.fetch import generate_fetch

        return generate_fetch(task, path, episodes=episodes, seed=seed, force=force, **options)
    if task in MAZE_DATASETS:
        from diffctl.datasets.generators.maze import generate_maze

        return generate_maze(task, path, episodes=episodes, seed=seed, force=force, **options)
    from diffctl.datasets.generators.locomotion import generate_locomotion

    return generate_locomotion(task, path, episodes=episodes, seed=seed, force=force, **options)
