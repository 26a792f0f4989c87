"""Minari datasets read with h5py alone (no ``minari`` package at run time).

A Minari dataset directory holds ``data/main_data.hdf5`` with one group per episode (``episode_0``, ...):
``observations`` with T+1 rows (the final observation included; a subgroup per key for dict observations),
``actions``, ``rewards``, ``terminations``, ``truncations`` with T rows and an ``infos`` group. Episodes
become D4RL-style keys: ``observations`` (first T rows), ``next_observations`` (last T rows), ``terminals``,
``timeouts`` and ``infos/<key>``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from diffctl.datasets.store import EpisodeStore

_EPISODE = re.compile(r"^episode_(\d+)$")


def find_main_file(src: str | os.PathLike[str]) -> Path:
    """``main_data.hdf5`` from a dataset directory, its ``data/`` directory or the file itself."""
    path = Path(src)
    for candidate in (path / "data" / "main_data.hdf5", path / "main_data.hdf5", path):
        if candidate.is_file():
            return candidate
    if not path.exists():
        raise FileNotFoundError(f"Minari dataset {path} does not exist")
    raise FileNotFoundError(
        f"{path}: no data/main_data.hdf5 (expected a Minari dataset directory in the HDF5 storage format; "
        "arrow-format datasets are not supported)"
    )


def _read(group: Any, key: str, where: str) -> np.ndarray:
    try:
        return np.asarray(group[key][()])
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{where}: cannot read key {key!r} (truncated or corrupt file?): {err}") from err


def _read_tree(group: Any, where: str, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key in group:
        if hasattr(group[key], "keys"):
            out.update(_read_tree(group[key], where, prefix=f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = _read(group, key, where)
    return out


def _episode(group: Any, where: str) -> dict[str, np.ndarray]:
    missing = [
        k for k in ("observations", "actions", "rewards", "terminations", "truncations") if k not in group
    ]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; found {sorted(group.keys())}")
    actions = _read(group, "actions", where)
    t = actions.shape[0]
    if t == 0:
        raise ValueError(f"{where}: empty episode (0 actions)")
    episode: dict[str, np.ndarray] = {"actions": actions}
    obs_item = group["observations"]
    observations = (
        _read_tree(obs_item, where, prefix="observations/")
        if hasattr(obs_item, "keys")
        else {"observations": _read(group, "observations", where)}
    )
    for key, values in observations.items():
        if values.shape[0] != t + 1:
            raise ValueError(f"{where}: {key!r} has {values.shape[0]} rows, expected T+1 = {t + 1}")
        episode[key] = values[:t]
        episode["next_" + key] = values[1:]
    for src_key, dst_key in (
        ("rewards", "rewards"),
        ("terminations", "terminals"),
        ("truncations", "timeouts"),
    ):
        values = _read(group, src_key, where).reshape(-1)
        if values.shape[0] != t:
            raise ValueError(f"{where}: {src_key!r} has {values.shape[0]} rows, expected T = {t}")
        episode[dst_key] = values.astype(bool) if dst_key != "rewards" else values
    if "infos" in group and hasattr(group["infos"], "keys"):
        for key, values in _read_tree(group["infos"], where, prefix="infos/").items():
            if values.ndim == 0 or values.shape[0] not in (t, t + 1):
                raise ValueError(
                    f"{where}: {key!r} has shape {values.shape}, expected T or T+1 = {t}/{t + 1} rows"
                )
            episode[key] = values[:t]
    return episode


def read_minari(src: str | os.PathLike[str]) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """All episodes of a Minari dataset (ordered by episode id) and a card from its metadata."""
    import h5py

    main = find_main_file(src)
    try:
        f = h5py.File(main, "r")
    except OSError as err:
        raise ValueError(f"{main} is not a readable HDF5 file (truncated or corrupt?): {err}") from err
    with f:
        names = sorted((int(m.group(1)), k) for k in f if (m := _EPISODE.match(k)))
        if not names:
            raise ValueError(f"{main}: no episode_N groups found; keys {sorted(f.keys())[:10]}")
        episodes = [_episode(f[name], f"{main}:{name}") for _, name in names]
        meta = {k: _scalar(v) for k, v in f.attrs.items()}
    meta_file = main.parent / "metadata.json"
    if meta_file.is_file():
        try:
            meta.update(json.loads(meta_file.read_text()))
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_file}: invalid JSON: {err}") from err
    card = {"source": {"format": "minari", "file": str(main.resolve())}, "minari_metadata": meta}
    return episodes, card


def _scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"array{value.shape}"
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def import_minari(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    task: str | None = None,
    force: bool = False,
) -> EpisodeStore:
    """Minari dataset -> EpisodeStore at ``out`` (in memory when ``out`` is None)."""
    episodes, card = read_minari(src)
    if task:
        card["task"] = task
    store = (
        EpisodeStore.memory(card) if out is None else EpisodeStore.create(out, overwrite=force, attrs=card)
    )
    try:
        for i, episode in enumerate(episodes):
            try:
                store.add_episode(episode)
            except ValueError as err:
                raise ValueError(f"{card['source']['file']}: episode {i}: {err}") from err
    except BaseException:
        store.discard()
        raise
    store.close()
    return store
