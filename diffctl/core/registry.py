"""The agent registry and ``diffctl.load``: rebuild any saved agent from the class named in ``config.json``.

Agent families register their classes (class name -> module path) with ``register_agent``; the module is
imported only when an agent of that class is built or loaded. Each agent class carries its typed config as
``config_class``, so the registry is also where the pipeline finds an agent's valid settings.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from diffctl.core.persistence import read_config_json

AGENT_CLASSES: dict[str, str] = {
    "DiffusionPolicy": "diffctl.policies.diffusion",
    "DiffusionQL": "diffctl.policies.offline_rl.diffusion_ql",
    "IDQL": "diffctl.policies.offline_rl.idql",
    "EDP": "diffctl.policies.offline_rl.edp",
    "TD3BC": "diffctl.policies.offline_rl.td3bc",
    "StreamingDiffusionPolicy": "diffctl.policies.streaming",
    "ConsistencyPolicy": "diffctl.policies.consistency",
    "FlowPolicy": "diffctl.policies.flow",
    "AnchoredDiffusionPolicy": "diffctl.policies.anchored",
    "BCPolicy": "diffctl.policies.bc",
    "Diffuser": "diffctl.planners.diffuser",
    "DecisionDiffuser": "diffctl.planners.decision_diffuser",
    "CoarseToFineDiffuser": "diffctl.planners.coarse_to_fine",
    "ImageDiffusion": "diffctl.images.model",
    "DiffusionWorldModel": "diffctl.world_models.dwm",
    "MLPEnsembleWorldModel": "diffctl.world_models.ensemble",
    "FrameWorldModel": "diffctl.world_models.frames",
    "ResidualPolicy": "diffctl.improve.residual",
}


def register_agent(class_name: str, module: str) -> None:
    """Make ``load`` and the train pipeline find ``class_name`` in ``module`` (imported on first use)."""
    AGENT_CLASSES[class_name] = module


def agent_class(name: str) -> type:
    """The agent class registered under ``name`` (ValueError listing the known ones)."""
    if name not in AGENT_CLASSES:
        raise ValueError(f"unknown agent class {name!r}; known classes: {sorted(AGENT_CLASSES)}")
    return getattr(importlib.import_module(AGENT_CLASSES[name]), name)


def load(path: str | os.PathLike[str], **overrides: Any) -> Any:
    """Load the agent saved in directory ``path``; ``overrides`` change sampler (and act) settings.

    The loaded agent knows the task (``agent.task``) and dataset (``agent.dataset``) it was trained on when
    its run recorded them.
    """
    config = read_config_json(path)
    name = config.get("class")
    if name not in AGENT_CLASSES:
        raise ValueError(
            f"{Path(path) / 'config.json'} names agent class {name!r}; known classes: {sorted(AGENT_CLASSES)}"
        )
    return agent_class(name).load(Path(path), **overrides)
