"""diffctl: diffusion-based decision making.

Policies and planners behind one ``act`` / ``plan`` interface, trained from offline datasets,
rolled out in gymnasium + MuJoCo simulators and deployed with real-time denoising. Heavy parts (simulators,
training) are imported lazily so ``import diffctl`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "kernels",
    "nets",
    "datasets",
    "envs",
    "policies",
    "planners",
    "deploy",
    "train",
    "improve",
    "world_models",
}
_ATTRIBUTES = {
    "load": "diffctl.agents",
    "evaluate": "diffctl.envs.evaluate",
}

__all__ = ["__version__", *sorted(_SUBMODULES), *sorted(_ATTRIBUTES)]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"diffctl.{name}")
    if name in _ATTRIBUTES:
        return getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    raise AttributeError(f"module 'diffctl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
