"""The agent directory: ``config.json`` (class, format version, the whole typed config, normalizers, sampler,
task and dataset identity) + ``model.safetensors``, written atomically and read without unpickling."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from diffctl.atomic import atomic_dir
from diffctl.core.sampler import SamplerConfig
from diffctl.datasets.normalizer import Normalizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
AGENT_KEYS = ("hyperparameters", "normalizers", "sampler")


def write_agent_dir(
    path: str | os.PathLike[str], config: Mapping[str, Any], state: Mapping[str, torch.Tensor]
) -> Path:
    """Write an agent directory atomically: fill a temp dir next to ``path``, then swap it in by rename."""
    from safetensors.torch import save_file

    final = Path(path)
    with atomic_dir(final) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return final


def read_config_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of the agent directory ``path`` as a dict, with one-line errors."""
    cfg_path = Path(path) / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"no agent at {path}: {cfg_path} does not exist")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_path} must hold a JSON object, got {type(config).__name__}")
    return config


def read_agent_dir(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``config.json`` and ``model.safetensors`` of an agent directory, with clear errors."""
    from safetensors.torch import load_file

    root = Path(path)
    config = read_config_json(root)
    weights_path = root / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(f"agent directory {root} has no {WEIGHTS_FILE}")
    try:
        state = load_file(str(weights_path))
    except Exception as err:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {err}") from err
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{weights_path} holds non-finite weights (NaN or inf) in {sorted(bad)[:5]}")
    return config, state


def agent_config(agent: Any, version: int, **sections: Any) -> dict[str, Any]:
    """The ``config.json`` content of an agent: class name, format ``version``, its typed config (under
    ``hyperparameters``), normalizers, sampler, the task and dataset it was trained on (when known) and any
    extra top-level ``sections``."""
    out = {
        "class": type(agent).__name__,
        "version": version,
        "hyperparameters": agent.config.to_dict(),
        "normalizers": {k: n.to_dict() for k, n in agent.normalizers.items()},
        **sections,
    }
    if getattr(agent, "sampler", None) is not None:
        out["sampler"] = agent.sampler.to_dict()
    return {**out, **origin_sections(agent)}


def origin_sections(agent: Any) -> dict[str, Any]:
    """``{"task": ..., "dataset": ...}`` of an agent that knows what it was trained on (else empty)."""
    out = {}
    if getattr(agent, "task", None):
        out["task"] = str(agent.task)
    if getattr(agent, "dataset", None):
        out["dataset"] = dict(agent.dataset)
    return out


def dataset_identity(store: Any, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What identifies an ``EpisodeStore``'s content in a checkpoint: its name, path, size and the card's
    recipe, seed and creation time (a regenerated store with another seed or size differs)."""
    card = dict(getattr(store, "attrs", {}) or {})
    ident = {
        "name": str(card.get("dataset") or getattr(store, "name", "")),
        "path": str(path if path is not None else getattr(store, "path", "") or ""),
        "num_episodes": int(store.num_episodes),
        "num_steps": int(store.num_steps),
    }
    ident.update({k: card[k] for k in ("recipe", "seed", "created_utc") if k in card})
    return ident


def read_agent_config(
    path: str | os.PathLike[str], cls_name: str, version: int, keys: Sequence[str] = AGENT_KEYS
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``read_agent_dir`` plus the checks every ``load`` makes: the saved class is ``cls_name``, the format
    version is ``version`` and the top-level ``keys`` are present."""
    config, state = read_agent_dir(path)
    if config.get("class") != cls_name:
        raise ValueError(f"{path}/config.json has class {config.get('class')!r}; expected {cls_name!r}")
    if config.get("version") != version:
        raise ValueError(f"{path}/config.json has version {config.get('version')!r}; supported: {version}")
    for key in keys:
        if key not in config:
            raise ValueError(f"{path}/config.json is missing key {key!r}")
    return config, state


def build_agent(
    cls: Any,
    path: str | os.PathLike[str],
    config: Mapping[str, Any],
    state: Mapping[str, torch.Tensor],
    sampler: SamplerConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """``cls(obs_dim, action_dim, **hyperparameters)`` (saved ones updated by ``overrides``) with the saved
    normalizers and ``sampler`` (agents that sample), then the saved weights (a mismatch is a ValueError
    naming the file) and the task and dataset the agent was trained on (None when not recorded)."""
    hp = {**config["hyperparameters"], **dict(overrides or {})}
    normalizers = {k: Normalizer.from_dict(v) for k, v in config["normalizers"].items()}
    if sampler is not None:
        hp["sampler"] = sampler
    dims = [hp.pop(k, None) for k in ("obs_dim", "action_dim")]
    agent = construct(cls, path, *dims, **hp, normalizers=normalizers)
    return restore(agent, config, state, path)


def construct(cls: Any, path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)`` for the agent saved in ``path``; a config it cannot take is one ValueError
    naming ``config.json``."""
    try:
        return cls(*args, **kwargs)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}/config.json does not describe a valid {cls.__name__}: {err}") from err


def restore(agent: Any, config: Mapping[str, Any], state: Mapping[str, torch.Tensor], path: Any) -> Any:
    """Put the saved weights into ``agent.network`` and record the task and dataset it was trained on
    (None when not recorded); returns the agent."""
    load_network_state(agent.network, state, path)
    agent.task, agent.dataset = config.get("task"), config.get("dataset")
    return agent


def load_network_state(network: Any, state: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Load the saved weights of the agent directory ``path`` into ``network`` (a mismatch is a ValueError
    naming the file)."""
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{path}/model.safetensors does not match the network in config.json: {err}"
        ) from err
