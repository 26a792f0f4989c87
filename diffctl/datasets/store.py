"""EpisodeStore: episodes in a zarr group laid out like diffusion_policy's ReplayBuffer.

``data/<key>`` holds each key concatenated over time (chunked along time, compressed) and
``meta/episode_ends`` the cumulative int64 episode ends, so a store written by diffusion_policy (zarr v2)
opens unchanged. A new store is written in a hidden sibling directory and renamed into place on ``close()``;
appending to an existing store writes the data first and ``episode_ends`` last, so a killed writer never
leaves a store whose episodes point at missing steps.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.storage

from diffctl.atomic import remove_stale, temp_name

STORE_VERSION = 1
_RESERVED = "diffctl"
_FLUSH_STEPS = 1 << 16
_CHUNK_BYTES = 1 << 20
_MAX_CHUNK_ROWS = 1 << 16


def flatten_dict(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one level with ``a/b`` keys (how nested observations are stored)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_dict(value, prefix=f"{name}/"))
        else:
            flat[name] = value
    return flat


def chunk_checksums(values: np.ndarray, rows: int) -> list[str]:
    """BLAKE2b digests of ``values`` in blocks of ``rows`` rows (a store's chunks along the step axis)."""
    data = np.ascontiguousarray(values)
    return [
        hashlib.blake2b(data[i : i + rows].tobytes(), digest_size=16).hexdigest()
        for i in range(0, max(len(data), 1), rows)
    ]


def _chunk_rows(row_shape: tuple[int, ...], dtype: np.dtype) -> int:
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize)
    return int(np.clip(_CHUNK_BYTES // row_bytes, 1, _MAX_CHUNK_ROWS))


def _is_frames(row_shape: tuple[int, ...]) -> bool:
    """Per-step values that are images (H, W, C): stored one frame per chunk, in shards of about 1 MB."""
    return len(row_shape) == 3


def _block_rows(handle: zarr.Array) -> int:
    """Rows per stored block: the shard of a sharded (image) array, else the chunk (checksum granularity)."""
    shards = getattr(handle, "shards", None)
    return int((shards or handle.chunks)[0])


def _list_arrays(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    arrays: dict[str, zarr.Array] = {}
    for name, member in sorted(group.members()):
        if isinstance(member, zarr.Array):
            arrays[f"{prefix}{name}"] = member
        else:
            arrays.update(_list_arrays(member, prefix=f"{prefix}{name}/"))
    return arrays


class EpisodeStore:
    """Episodes of equal-keyed arrays; read with ``episode(i)`` or whole arrays with ``array(key)``.

    Build with ``create(path)`` / ``memory()`` and ``add_episode``; read with ``open(path)``.
    ``attrs`` is the dataset card (a JSON-able dict written on close).
    """

    def __init__(
        self,
        root: zarr.Group,
        *,
        path: Path | None,
        mode: str,
        temp_path: Path | None = None,
        overwrite: bool = False,
    ) -> None:
        self._root = root
        self._path = path
        self._mode = mode
        self._temp_path = temp_path
        self._overwrite = overwrite
        self._closed = False
        self._buffer: list[dict[str, np.ndarray]] = []
        self._buffer_steps = 0
        self._cache: dict[str, np.ndarray] = {}
        raw_attrs = dict(root.attrs)
        self._attrs: dict[str, Any] = {k: v for k, v in raw_attrs.items() if k != _RESERVED}
        self._arrays = _list_arrays(root["data"]) if "data" in root else {}
        self._ends = np.asarray(root["meta/episode_ends"][:], dtype=np.int64) if "meta" in root else None
        if self._ends is None:
            self._ends = np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls, path: str | os.PathLike[str], *, overwrite: bool = False, attrs: Mapping[str, Any] | None = None
    ) -> EpisodeStore:
        """A new writable store, published at ``path`` by ``close()`` (atomic rename of a temp directory)."""
        final = Path(path)
        if final.exists() and not overwrite:
            raise FileExistsError(f"{final} already exists (pass overwrite=True / --force to replace it)")
        if not final.parent.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(final)
        temp = temp_name(final, "tmp")
        root = zarr.open_group(store=zarr.storage.LocalStore(str(temp)), mode="w", zarr_format=3)
        cls._init_layout(root, attrs, incomplete=True)
        return cls(root, path=final, mode="w", temp_path=temp, overwrite=overwrite)

    @classmethod
    def memory(cls, attrs: Mapping[str, Any] | None = None) -> EpisodeStore:
        """A writable in-memory store (tests, conversions, small generated datasets)."""
        root = zarr.open_group(store=zarr.storage.MemoryStore(), mode="w", zarr_format=3)
        cls._init_layout(root, attrs, incomplete=False)
        return cls(root, path=None, mode="a")

    @classmethod
    def from_arrays(
        cls,
        data: Mapping[str, Any],
        episode_ends: np.ndarray,
        *,
        path: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        attrs: Mapping[str, Any] | None = None,
    ) -> EpisodeStore:
        """A finished store from concatenated arrays and cumulative ``episode_ends`` (in memory if no
        path)."""
        store = cls.memory(attrs) if path is None else cls.create(path, overwrite=overwrite, attrs=attrs)
        try:
            store.add_episodes(data, episode_ends)
        except BaseException:
            store.discard()
            raise
        store.close()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r") -> EpisodeStore:
        """Open a finished store read-only (``mode="r"``) or for appending episodes (``mode="a"``)."""
        if mode not in ("r", "a"):
            raise ValueError(f"EpisodeStore.open mode must be 'r' or 'a', got {mode!r}")
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"episode store {p} does not exist")
        if not p.is_dir():
            raise ValueError(f"{p} is not a zarr episode store (expected a directory with data/ and meta/)")
        try:
            root = zarr.open_group(store=zarr.storage.LocalStore(str(p), read_only=mode == "r"), mode=mode)
        except Exception as err:
            raise ValueError(f"{p} is not a readable zarr group: {err}") from err
        cls._check_layout(root, p)
        return cls(root, path=p, mode=mode)

    @staticmethod
    def _init_layout(root: zarr.Group, attrs: Mapping[str, Any] | None, *, incomplete: bool) -> None:
        root.create_group("data")
        meta = root.create_group("meta")
        meta.create_array("episode_ends", shape=(0,), chunks=(1 << 16,), dtype="int64")
        root.attrs.update(
            {**dict(attrs or {}), _RESERVED: {"version": STORE_VERSION, "incomplete": incomplete}}
        )

    @staticmethod
    def _check_layout(root: zarr.Group, path: Path) -> None:
        reserved = root.attrs.get(_RESERVED, {})
        if isinstance(reserved, Mapping):
            if reserved.get("incomplete"):
                raise ValueError(f"{path} is an incomplete episode store (its writer did not finish)")
            version = reserved.get("version", STORE_VERSION)
            if version != STORE_VERSION:
                raise ValueError(
                    f"{path}: unsupported episode store version {version} (expected {STORE_VERSION})"
                )
        for key in ("data", "meta"):
            if key not in root or not isinstance(root[key], zarr.Group):
                raise ValueError(
                    f"{path}: missing group {key!r} (expected the data/ + meta/episode_ends layout)"
                )
        if "episode_ends" not in root["meta"]:
            raise ValueError(f"{path}: missing array 'meta/episode_ends'")
        try:
            ends = np.asarray(root["meta/episode_ends"][:])
        except Exception as err:
            raise ValueError(f"{path}: cannot read 'meta/episode_ends' (corrupt file?): {err}") from err
        if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer):
            raise ValueError(
                f"{path}: 'meta/episode_ends' must be a 1-D integer array, got {ends.dtype} {ends.shape}"
            )
        if ends.size and (ends[0] < 0 or np.any(np.diff(ends) < 0)):
            raise ValueError(f"{path}: 'meta/episode_ends' must be non-negative and non-decreasing")
        total = int(ends[-1]) if ends.size else 0
        for key, array in _list_arrays(root["data"]).items():
            if array.ndim == 0 or array.shape[0] < total:
                raise ValueError(
                    f"{path}: array 'data/{key}' has {array.shape[0] if array.ndim else 0} steps but "
                    f"meta/episode_ends needs {total} (truncated store?)"
                )

    # ------------------------------------------------------------------ properties
    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def name(self) -> str:
        return str(self._path) if self._path is not None else "<memory store>"

    @property
    def writable(self) -> bool:
        return self._mode in ("w", "a") and not self._closed

    @property
    def attrs(self) -> dict[str, Any]:
        """The dataset card; edits on a writable store are saved by ``close()`` / ``flush()``."""
        return self._attrs

    @property
    def episode_ends(self) -> np.ndarray:
        self._flush_if_writable()
        return self._ends.copy()

    @property
    def episode_lengths(self) -> np.ndarray:
        ends = self.episode_ends
        return np.diff(ends, prepend=0).astype(np.int64)

    @property
    def num_episodes(self) -> int:
        return int(self._ends.size) + len(self._buffer)

    @property
    def num_steps(self) -> int:
        return (int(self._ends[-1]) if self._ends.size else 0) + self._buffer_steps

    @property
    def keys(self) -> list[str]:
        if self._arrays:
            return sorted(self._arrays)
        return sorted(self._buffer[0]) if self._buffer else []

    def __len__(self) -> int:
        return self.num_episodes

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __repr__(self) -> str:
        counts = f"episodes={self.num_episodes}, steps={self.num_steps}"
        return f"EpisodeStore({self.name!r}, {counts}, keys={self.keys})"

    def shape(self, key: str) -> tuple[int, ...]:
        """Per-step shape of ``key``."""
        self._flush_if_writable()
        return tuple(self._array_handle(key).shape[1:])

    def dtype(self, key: str) -> np.dtype:
        self._flush_if_writable()
        return np.dtype(self._array_handle(key).dtype)

    # ------------------------------------------------------------------ reading
    def _array_handle(self, key: str) -> zarr.Array:
        if key not in self._arrays:
            raise KeyError(f"{self.name} has no key {key!r}; keys: {sorted(self._arrays)}")
        return self._arrays[key]

    def array(self, key: str) -> np.ndarray:
        """All steps of ``key`` concatenated over episodes (read once, checked against the checksums recorded
        at publish time when the store has them, then cached)."""
        self._flush_if_writable()
        if key not in self._cache:
            handle = self._array_handle(key)
            total = self.num_steps
            try:
                values = np.asarray(handle[:total])
            except Exception as err:
                raise ValueError(
                    f"{self.name}: cannot read 'data/{key}' (corrupt or truncated chunk): {err}"
                ) from err
            if self._mode == "r":
                self._check_checksums(key, handle, values)
            self._cache[key] = values
        return self._cache[key]

    def verify(self) -> dict[str, Any]:
        """Read every array and compare it, chunk by chunk, with the checksums recorded when the store was
        published; a ValueError names the first array and chunk that differ (a missing chunk file reads
        as zeros, so it shows up here too). Returns what was checked."""
        recorded = self._recorded_checksums()
        if recorded is None:
            return {
                "checked": False,
                "reason": "the store records no checksums (written by an older diffctl)",
            }
        self._cache.clear()
        for key in self.keys:
            self.array(key)
        return {"checked": True, "arrays": sorted(recorded), "chunks": sum(map(len, recorded.values()))}

    def _recorded_checksums(self) -> dict[str, list[str]] | None:
        reserved = self._root.attrs.get(_RESERVED, {})
        checksums = reserved.get("checksums") if isinstance(reserved, Mapping) else None
        return dict(checksums) if isinstance(checksums, Mapping) else None

    def _check_checksums(self, key: str, handle: zarr.Array, values: np.ndarray) -> None:
        recorded = self._recorded_checksums()
        if recorded is None:
            return
        if key not in recorded:
            raise ValueError(
                f"{self.name}: array 'data/{key}' has no recorded checksum (added after publish?)"
            )
        rows = _block_rows(handle)
        actual = chunk_checksums(values, rows)
        if len(actual) != len(recorded[key]):
            raise ValueError(
                f"{self.name}: array 'data/{key}' has {len(actual)} chunks; "
                f"{len(recorded[key])} were published"
            )
        for i, (got, want) in enumerate(zip(actual, recorded[key], strict=True)):
            if got != want:
                raise ValueError(
                    f"{self.name}: array 'data/{key}' chunk {i} (rows {i * rows}-"
                    f"{min((i + 1) * rows, len(values)) - 1}) differs from the checksum recorded "
                    "at publish time: a missing or corrupted chunk file"
                )

    def episode_slice(self, i: int) -> slice:
        self._flush_if_writable()
        n = self.num_episodes
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range for {self.name} with {n} episodes")
        i %= n
        start = int(self._ends[i - 1]) if i > 0 else 0
        return slice(start, int(self._ends[i]))

    def episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Episode ``i`` as ``{key: array of shape (T, ...)}``."""
        sl = self.episode_slice(i)
        out: dict[str, np.ndarray] = {}
        for key in keys or self.keys:
            if key in self._cache:
                out[key] = self._cache[key][sl].copy()
                continue
            try:
                out[key] = np.asarray(self._array_handle(key)[sl])
            except KeyError:
                raise
            except Exception as err:
                raise ValueError(
                    f"{self.name}: cannot read 'data/{key}' (corrupt or truncated chunk): {err}"
                ) from err
        return out

    def episodes(self, keys: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
        for i in range(self.num_episodes):
            yield self.episode(i, keys)

    # ------------------------------------------------------------------ writing
    def _check_writable(self) -> None:
        if self._closed:
            raise ValueError(f"{self.name} is closed")
        if self._mode == "r":
            raise ValueError(
                f"{self.name} was opened read-only (use EpisodeStore.open(path, mode='a') to append)"
            )

    def _validate(self, flat: dict[str, Any], what: str) -> tuple[dict[str, np.ndarray], int]:
        if not flat:
            raise ValueError(f"{self.name}: {what} has no arrays")
        arrays = {key: np.asarray(value) for key, value in flat.items()}
        lengths = {key: (a.shape[0] if a.ndim else None) for key, a in arrays.items()}
        for key, n in lengths.items():
            if n is None:
                raise ValueError(
                    f"{self.name}: {what} key {key!r} is a scalar; expected an array with a time axis"
                )
            if arrays[key].dtype == object:
                raise ValueError(
                    f"{self.name}: {what} key {key!r} has dtype object; expected a numeric array"
                )
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{self.name}: {what} arrays have mismatched lengths {lengths}")
        steps = next(iter(lengths.values()))
        for key, a in arrays.items():
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                raise ValueError(f"{self.name}: {what} key {key!r} contains NaN or inf")
        expected = self.keys
        if expected and sorted(arrays) != expected:
            raise ValueError(
                f"{self.name}: {what} keys {sorted(arrays)} differ from the store's keys {expected}"
            )
        for key, a in arrays.items():
            ref = self._arrays.get(key)
            ref_shape = tuple(ref.shape[1:]) if ref is not None else None
            if ref_shape is None and self._buffer:
                ref_shape = self._buffer[0][key].shape[1:]
            if ref_shape is not None and tuple(a.shape[1:]) != ref_shape:
                raise ValueError(
                    f"{self.name}: {what} key {key!r} has per-step shape {a.shape[1:]}, expected {ref_shape}"
                )
        return arrays, steps

    def add_episode(self, episode: Mapping[str, Any]) -> None:
        """Append one episode: arrays with equal leading length T >= 1; nested dicts become ``a/b`` keys."""
        self._check_writable()
        arrays, steps = self._validate(flatten_dict(episode), f"episode {self.num_episodes}")
        if steps == 0:
            raise ValueError(f"{self.name}: episode {self.num_episodes} is empty (0 steps)")
        self._buffer.append(arrays)
        self._buffer_steps += steps
        if self._buffer_steps >= _FLUSH_STEPS:
            self.flush()

    def add_episodes(self, data: Mapping[str, Any], episode_ends: Any) -> None:
        """Append many episodes: concatenated arrays and their cumulative (relative) ``episode_ends``."""
        self._check_writable()
        self.flush()
        ends = np.asarray(episode_ends, dtype=np.int64)
        arrays, steps = self._validate(flatten_dict(data), "data")
        if ends.ndim != 1 or ends.size == 0:
            raise ValueError(f"{self.name}: episode_ends must be a non-empty 1-D array")
        lengths = np.diff(ends, prepend=0)
        if np.any(lengths <= 0):
            bad = int(np.argmax(lengths <= 0))
            raise ValueError(f"{self.name}: episode {bad} is empty or episode_ends is not increasing")
        if int(ends[-1]) != steps:
            raise ValueError(
                f"{self.name}: episode_ends ends at {int(ends[-1])} but the arrays have {steps} steps"
            )
        self._write(arrays, ends)

    def flush(self) -> None:
        """Write buffered episodes: data arrays first, ``meta/episode_ends`` last."""
        if not self._buffer or self._closed:
            return
        keys = sorted(self._buffer[0])
        arrays = {k: np.concatenate([ep[k] for ep in self._buffer]) for k in keys}
        ends = np.cumsum([len(ep[keys[0]]) for ep in self._buffer], dtype=np.int64)
        self._buffer = []
        self._buffer_steps = 0
        self._write(arrays, ends)

    def _write(self, arrays: dict[str, np.ndarray], rel_ends: np.ndarray) -> None:
        base = int(self._ends[-1]) if self._ends.size else 0
        total = base + int(rel_ends[-1])
        data = self._root["data"]
        for key, values in arrays.items():
            handle = self._arrays.get(key)
            if handle is None:
                row = values.shape[1:]
                rows = _chunk_rows(row, values.dtype)
                handle = data.create_array(
                    key,
                    shape=(0, *row),
                    chunks=(1, *row) if _is_frames(row) else (rows, *row),
                    shards=(rows, *row) if _is_frames(row) else None,
                    dtype=values.dtype,
                    compressors=zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
                )
                self._arrays[key] = handle
            handle.resize((total, *handle.shape[1:]))
            handle[base:total] = values
        new_ends = np.concatenate([self._ends, base + rel_ends])
        ends_array = self._root["meta/episode_ends"]
        ends_array.resize((new_ends.size,))
        ends_array[self._ends.size :] = new_ends[self._ends.size :]
        self._ends = new_ends
        self._cache.clear()

    def _flush_if_writable(self) -> None:
        if self._buffer and not self._closed:
            self.flush()

    def close(self) -> None:
        """Flush, save the card and (for ``create``) publish the store at its path atomically."""
        if self._closed or self._mode == "r":
            self._closed = True
            return
        self.flush()
        if self._mode == "w" and self._ends.size == 0:
            self.discard()
            raise ValueError(f"{self.name}: no episodes were added; nothing written")
        checksums = {
            key: chunk_checksums(np.asarray(handle[: self.num_steps]), _block_rows(handle))
            for key, handle in self._arrays.items()
        }
        reserved = {"version": STORE_VERSION, "incomplete": False, "checksums": checksums}
        self._root.attrs.update({**self._attrs, _RESERVED: reserved})
        if self._mode == "w":
            assert self._path is not None and self._temp_path is not None
            self._publish(self._temp_path, self._path)
            self._root = zarr.open_group(
                store=zarr.storage.LocalStore(str(self._path), read_only=True), mode="r"
            )
            self._arrays = _list_arrays(self._root["data"])
        self._mode = "r"
        self._closed = True

    def _publish(self, temp: Path, final: Path) -> None:
        old = None
        if final.exists():
            if not self._overwrite:
                shutil.rmtree(temp, ignore_errors=True)
                raise FileExistsError(f"{final} appeared while writing; refusing to replace it")
            old = temp_name(final, "old")
            os.rename(final, old)
        os.rename(temp, final)
        if old is not None:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)

    def discard(self) -> None:
        """Abandon a store being created: remove its temp directory; the target path is left untouched."""
        if self._mode == "w" and self._temp_path is not None:
            shutil.rmtree(self._temp_path, ignore_errors=True)
        self._buffer = []
        self._buffer_steps = 0
        self._closed = True

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and self._mode == "w":
            self.discard()
        else:
            self.close()

    # ------------------------------------------------------------------ copying
    def copy_to(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        overwrite: bool = False,
        attrs: Mapping[str, Any] | None = None,
    ) -> EpisodeStore:
        """A copy of this store (on disk at ``path`` or in memory), e.g. to import a diffusion_policy zarr."""
        if self.num_episodes == 0:
            raise ValueError(f"{self.name} has no episodes to copy")
        data = {key: self.array(key) for key in self.keys}
        card = dict(self._attrs) if attrs is None else dict(attrs)
        return EpisodeStore.from_arrays(data, self.episode_ends, path=path, overwrite=overwrite, attrs=card)
