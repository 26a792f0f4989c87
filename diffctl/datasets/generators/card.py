"""Dataset cards: the metadata every generated dataset carries in ``store.attrs``."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from typing import Any

CARD_PACKAGES = (
    "diffctl",
    "numpy",
    "mujoco",
    "gymnasium",
    "gymnasium-robotics",
    "stable-baselines3",
    "torch",
)


def package_versions(names: tuple[str, ...] = CARD_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (packages that are not installed are left out)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "diffctl":
                from diffctl import __version__

                versions[name] = __version__
    return versions


def make_card(
    *,
    task: str,
    dataset: str,
    recipe: str,
    seed: int,
    budgets: dict[str, Any],
    behaviour: dict[str, Any],
    generation_seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """A JSON-able card: what was generated, how, with which budgets and seed, and how good the data is."""
    return {
        "generator": "diffctl.datasets.generators",
        "task": task,
        "dataset": dataset,
        "recipe": recipe,
        "seed": int(seed),
        "budgets": budgets,
        "behaviour_policy": behaviour,
        "generation_seconds": round(float(generation_seconds), 3),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": package_versions(),
        **extra,
    }
