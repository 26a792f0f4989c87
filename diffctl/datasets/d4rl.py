"""D4RL HDF5 files: read them into an EpisodeStore and export a store back to D4RL's flat layout.

D4RL keeps every key concatenated over time at the file's top level (``observations``, ``actions``,
``rewards``, ``terminals``, ``timeouts``, optional ``next_observations``) with extra per-step arrays under
``infos/``; episodes end where ``terminals`` or ``timeouts`` is set. Old files without ``timeouts`` are split
every ``episode_limit`` steps (the task's time limit).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from diffctl.atomic import atomic_path
from diffctl.datasets.store import EpisodeStore

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
EPISODE_LIMITS = {
    "maze2d-umaze": 300,
    "maze2d-medium": 600,
    "maze2d-large": 800,
    "hopper": 1000,
    "halfcheetah": 1000,
    "walker2d": 1000,
}


def episode_limit_for(task: str | None) -> int | None:
    """The D4RL time limit of a task or dataset name (``hopper-medium-v2`` -> 1000), None if unknown."""
    if not task:
        return None
    name = task.lower()
    for key in sorted(EPISODE_LIMITS, key=len, reverse=True):
        if name == key or name.startswith(key + "-"):
            return EPISODE_LIMITS[key]
    return None


def _open_h5(path: Path) -> Any:
    import h5py

    if not path.exists():
        raise FileNotFoundError(f"D4RL file {path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 file (truncated or corrupt?): {err}") from err


def _item(f: Any, key: str, path: Path) -> Any:
    """``f[key]`` without following external links (a dangling or external link is a ValueError)."""
    import h5py

    link = f.get(key, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise ValueError(
            f"{path}: key {key!r} is an external link to {link.filename}:{link.path}; diffctl reads only "
            "data stored in the file itself"
        )
    item = f.get(key)
    if item is None:
        raise ValueError(f"{path}: key {key!r} is a link to nothing ({link})")
    return item


def _read_dataset(f: Any, key: str, path: Path) -> np.ndarray:
    item = _item(f, key, path)
    if hasattr(item, "keys"):
        raise ValueError(f"{path}: key {key!r} is a group; expected an array (an HDF5 dataset)")
    try:
        values = np.asarray(item[()])
    except (OSError, RuntimeError, KeyError) as err:
        raise ValueError(f"{path}: cannot read key {key!r} (truncated or corrupt file?): {err}") from err
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{path}: key {key!r} has dtype {values.dtype}; expected real numbers or booleans")
    if values.ndim == 0:
        raise ValueError(f"{path}: key {key!r} is a scalar; expected one row per step")
    return values


def episode_ends_from_flags(
    terminals: np.ndarray, timeouts: np.ndarray | None, episode_limit: int | None
) -> np.ndarray:
    """Cumulative episode ends: after each terminal/timeout step (or every ``episode_limit`` steps since
    the last end when there are no timeouts); a trailing partial episode is kept."""
    n = terminals.shape[0]
    done = terminals.astype(bool).copy()
    if timeouts is not None:
        done |= timeouts.astype(bool)
    elif episode_limit is not None:
        since = 0
        flags = done.tolist()
        for t in range(n):
            since += 1
            if flags[t] or since >= episode_limit:
                done[t] = True
                since = 0
    ends = np.flatnonzero(done) + 1
    if ends.size == 0 or ends[-1] != n:
        ends = np.append(ends, n)
    return ends.astype(np.int64)


def read_d4rl(
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    episode_limit: int | None = None,
    log: Any = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """Read a D4RL HDF5 file -> (concatenated arrays, episode_ends, card)."""
    src = Path(path)
    say = log if log is not None else (lambda msg: print(msg, file=sys.stderr))
    with _open_h5(src) as f:
        missing = [k for k in REQUIRED_KEYS if k not in f]
        if missing:
            raise ValueError(f"{src}: missing D4RL key(s) {missing}; found {sorted(f.keys())}")
        data: dict[str, np.ndarray] = {}
        for key in f:
            if key == "metadata":
                continue
            item = _item(f, key, src)
            if hasattr(item, "keys") and key not in REQUIRED_KEYS:
                for sub in item:
                    if not hasattr(_item(f, f"{key}/{sub}", src), "keys"):
                        data[f"{key}/{sub}"] = _read_dataset(f, f"{key}/{sub}", src)
            else:
                data[key] = _read_dataset(f, key, src)
        card = {
            "source": {"format": "d4rl", "file": str(src.resolve())},
            "d4rl_metadata": {k: _json_value(v) for k, v in f.attrs.items()},
        }
        if "metadata" in f and hasattr(f["metadata"], "keys"):
            card["d4rl_metadata"].update(_read_metadata(f["metadata"]))
    n = data["observations"].shape[0]
    lengths = {k: (v.shape[0] if v.ndim else None) for k, v in data.items()}
    bad = {k: v for k, v in lengths.items() if v != n}
    if bad:
        raise ValueError(f"{src}: key(s) {sorted(bad)} have lengths {bad}, expected {n} like 'observations'")
    if n == 0:
        raise ValueError(f"{src}: 'observations' is empty")
    for key in ("rewards", "terminals", "timeouts"):
        if key in data and data[key].size != n:
            raise ValueError(f"{src}: key {key!r} has shape {data[key].shape}; expected ({n},) or ({n}, 1)")
    for key in ("terminals", "timeouts"):
        if key in data:
            flags = data[key].reshape(n)
            if flags.dtype.kind == "f" and not np.isfinite(flags).all():
                first = int(np.flatnonzero(~np.isfinite(flags))[0])
                raise ValueError(
                    f"{src}: key {key!r} holds NaN or inf flags (first at step {first}); expected 0/1"
                )
            data[key] = flags.astype(bool)
    data["rewards"] = data["rewards"].reshape(n)
    timeouts = data.get("timeouts")
    limit = episode_limit
    if timeouts is None:
        limit = limit or episode_limit_for(task) or episode_limit_for(src.stem)
        if limit is None:
            raise ValueError(
                f"{src} has no 'timeouts' key and no episode limit is known; pass --task or an episode limit"
            )
        say(f"{src.name}: no 'timeouts' key; splitting episodes every {limit} steps (the task's time limit)")
        card["episode_split"] = f"no timeouts in file: split at terminals and every {limit} steps"
        ends = episode_ends_from_flags(data["terminals"], None, limit)
        timeouts = np.zeros(n, dtype=bool)
        timeouts[ends - 1] = ~data["terminals"][ends - 1]
        data["timeouts"] = timeouts
    else:
        ends = episode_ends_from_flags(data["terminals"], timeouts, None)
        card["episode_split"] = "terminals or timeouts"
    if task:
        card["task"] = task
    return data, ends, card


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"array{value.shape}"
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def _read_metadata(group: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in group:
        item = group[key]
        if hasattr(item, "keys"):
            continue
        if item.size <= 64:
            out[f"{prefix}{key}"] = _json_value(item[()])
    return out


def import_d4rl(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    task: str | None = None,
    episode_limit: int | None = None,
    force: bool = False,
    log: Any = None,
) -> EpisodeStore:
    """D4RL HDF5 file -> EpisodeStore at ``out`` (in memory when ``out`` is None)."""
    data, ends, card = read_d4rl(src, task=task, episode_limit=episode_limit, log=log)
    _check_finite(data, Path(src))
    return EpisodeStore.from_arrays(data, ends, path=out, overwrite=force, attrs=card)


def _check_finite(data: Mapping[str, np.ndarray], src: Path) -> None:
    for key, values in data.items():
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            bad = int(np.argmax(~np.isfinite(values).reshape(values.shape[0], -1).all(axis=1)))
            raise ValueError(f"{src}: key {key!r} contains NaN or inf (first at step {bad})")


def export_d4rl(
    store: EpisodeStore | str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Write a store as a D4RL HDF5 file, atomically (``timeouts`` marks non-terminal episode ends)."""
    import h5py

    if not isinstance(store, EpisodeStore):
        store = EpisodeStore.open(store)
    dst = Path(out)
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} already exists (use --force to replace it)")
    missing = [k for k in REQUIRED_KEYS[:3] if k not in store.keys]
    if missing:
        raise ValueError(f"{store.name}: cannot export to D4RL, missing key(s) {missing}; has {store.keys}")
    ends = store.episode_ends
    n = int(ends[-1])
    terminals = (
        store.array("terminals").reshape(n).astype(bool)
        if "terminals" in store.keys
        else np.zeros(n, dtype=bool)
    )
    if "timeouts" in store.keys:
        timeouts = store.array("timeouts").reshape(n).astype(bool)
    else:
        timeouts = np.zeros(n, dtype=bool)
        timeouts[ends - 1] = ~terminals[ends - 1]
    with atomic_path(dst) as tmp, h5py.File(tmp, "w") as f:
        for key in store.keys:
            if key in ("terminals", "timeouts"):
                continue
            values = store.array(key)
            if key == "rewards":
                values = values.reshape(n).astype(np.float32)
            f.create_dataset(key, data=values, compression="gzip", compression_opts=4)
        f.create_dataset("terminals", data=terminals)
        f.create_dataset("timeouts", data=timeouts)
        f.attrs["diffctl_card"] = json.dumps(store.attrs, default=str)
    return dst
