"""Offline datasets: the zarr EpisodeStore, D4RL / Minari / zarr import and export, SequenceDataset windows,
normalizers and D4RL normalized scores. Heavy parts (torch, h5py) load on first use."""

from __future__ import annotations

import importlib
from typing import Any

from diffctl.datasets.store import EpisodeStore, flatten_dict

_LAZY = {
    "SequenceDataset": "diffctl.datasets.sequence",
    "Normalizer": "diffctl.datasets.normalizer",
    "normalized_score": "diffctl.datasets.scores",
    "import_d4rl": "diffctl.datasets.d4rl",
    "export_d4rl": "diffctl.datasets.d4rl",
    "read_d4rl": "diffctl.datasets.d4rl",
    "import_minari": "diffctl.datasets.minari",
    "read_minari": "diffctl.datasets.minari",
    "import_zarr": "diffctl.datasets.convert",
    "import_dataset": "diffctl.datasets.convert",
}

__all__ = ["EpisodeStore", "flatten_dict", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in ("generators", "scores", "sequence", "normalizer", "d4rl", "minari", "convert", "store"):
        return importlib.import_module(f"diffctl.datasets.{name}")
    raise AttributeError(f"module 'diffctl.datasets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
