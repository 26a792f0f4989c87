"""Atomic checkpoint directories and trainer state stored as safetensors + json (never pickle).

A checkpoint directory is written under a temporary name and renamed into place, so an interrupted save leaves
the previous checkpoint intact and never a half-written one under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from diffctl import atomic

STATE_TENSORS = "trainer_state.safetensors"
STATE_JSON = "trainer_state.json"
STEP_PREFIX = "step_"


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically (sorted keys; numpy / torch values as plain JSON)."""
    atomic.write_json(path, data, sort_keys=True)


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (``optim.<param>.<name>``) and JSON metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def save_state(
    directory: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Write trainer tensors and JSON metadata into ``directory`` (itself made atomic by the caller)."""
    directory = Path(directory)
    cpu = {key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()}
    save_file(cpu, str(directory / STATE_TENSORS))
    write_json(directory / STATE_JSON, meta)


def load_state(directory: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`save_state` wrote; a missing file raises FileNotFoundError naming it."""
    directory = Path(directory)
    for name in (STATE_TENSORS, STATE_JSON):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory} has no {name}; expected a trainer checkpoint")
    try:
        meta = json.loads((directory / STATE_JSON).read_text())
        tensors = load_file(str(directory / STATE_TENSORS))
    except Exception as err:  # safetensors raises its own error type
        raise ValueError(f"corrupt trainer checkpoint in {directory}: {err}") from err
    return tensors, meta


def step_dir_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:07d}"


def list_step_checkpoints(checkpoints: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete step checkpoints under ``checkpoints`` sorted by step (temporary directories are ignored)."""
    root = Path(checkpoints)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        suffix = entry.name[len(STEP_PREFIX) :]
        if entry.name.startswith(STEP_PREFIX) and suffix.isdigit() and (entry / STATE_JSON).is_file():
            found.append((int(suffix), entry))
    return sorted(found)


def prune_step_checkpoints(checkpoints: str | os.PathLike[str], keep: int) -> None:
    """Delete all but the ``keep`` most recent step checkpoints."""
    for _, path in list_step_checkpoints(checkpoints)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
