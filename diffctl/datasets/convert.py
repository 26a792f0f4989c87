"""One entry point for every import format: D4RL HDF5, Minari directories and diffusion_policy zarr."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from diffctl.datasets.store import EpisodeStore

FORMATS = ("d4rl", "minari", "zarr")


def import_zarr(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    task: str | None = None,
    force: bool = False,
) -> EpisodeStore:
    """Copy a ReplayBuffer-layout zarr (diffusion_policy, zarr v2 or v3) into a validated diffctl store."""
    source = EpisodeStore.open(src)
    if source.num_episodes == 0:
        raise ValueError(f"{source.name} has no episodes")
    card = dict(source.attrs)
    card["source"] = {"format": "zarr", "file": str(Path(src).resolve())}
    if task:
        card["task"] = task
    try:
        return source.copy_to(out, overwrite=force, attrs=card)
    except ValueError as err:
        raise ValueError(f"{source.name}: {err}") from err


def import_dataset(
    fmt: str,
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    task: str | None = None,
    force: bool = False,
    **options: Any,
) -> EpisodeStore:
    """Import ``src`` of format ``fmt`` (one of FORMATS) into an EpisodeStore at ``out``."""
    if out is not None and Path(out).exists() and not force:
        raise FileExistsError(f"{out} already exists (use --force to replace it)")
    if fmt == "d4rl":
        from diffctl.datasets.d4rl import import_d4rl

        return import_d4rl(src, out, task=task, force=force, **options)
    if fmt == "minari":
        from diffctl.datasets.minari import import_minari

        return import_minari(src, out, task=task, force=force)
    if fmt == "zarr":
        return import_zarr(src, out, task=task, force=force)
    raise ValueError(f"unknown dataset format {fmt!r}; expected one of {FORMATS}")
