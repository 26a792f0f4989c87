"""``diffctl.load``: rebuild any saved agent from its directory by the class named in ``config.json``.

Agent families register their classes in ``AGENT_CLASSES`` (class name -> module path) with
``register_agent``; the module is imported only when an agent of that class is loaded.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

AGENT_CLASSES: dict[str, str] = {
    "DiffusionPolicy": "diffctl.policies.diffusion",
    "DiffusionQL": "diffctl.policies.offline_rl.diffusion_ql",
    "IDQL": "diffctl.policies.offline_rl.idql",
    "EDP": "diffctl.policies.offline_rl.edp",
    "StreamingDiffusionPolicy": "diffctl.policies.streaming",
    "ConsistencyPolicy": "diffctl.policies.consistency",
    "FlowPolicy": "diffctl.policies.flow",
    "Diffuser": "diffctl.planners.diffuser",
    "DecisionDiffuser": "diffctl.planners.decision_diffuser",
    "CoarseToFineDiffuser": "diffctl.planners.coarse_to_fine",
}


def register_agent(class_name: str, module: str) -> None:
    """Make ``load`` dispatch ``config.json["class"] == class_name`` to ``module.class_name.load``."""
    AGENT_CLASSES[class_name] = module


def load(path: str | os.PathLike[str], **overrides: Any) -> Any:
    """Load the agent saved in directory ``path``; ``overrides`` change sampler settings (solver, steps)."""
    root = Path(path)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no agent at {root}: {cfg_path} does not exist")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from err
    name = config.get("class") if isinstance(config, dict) else None
    if name not in AGENT_CLASSES:
        raise ValueError(f"{cfg_path} names agent class {name!r}; known classes: {sorted(AGENT_CLASSES)}")
    cls = getattr(importlib.import_module(AGENT_CLASSES[name]), name)
    return cls.load(root, **overrides)
