"""Atomic writes: a file or directory is filled under a temporary name beside its target and renamed into
place, so an interrupted job never leaves a half-written result (the previous version stays intact)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final`` (same suffix, so writers that go by the extension pick the
    right format) for a library to write to; it replaces ``final`` when the block exits without error and is
    removed otherwise."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.stem}.tmp-", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same directory + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = False) -> Path:
    """Write ``data`` as indented JSON atomically; numpy / torch values become plain lists and numbers."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=json_default))


def json_default(value: Any) -> Any:
    """numpy / torch scalars and arrays as plain JSON values, paths as strings."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def temp_name(final: Path, kind: str) -> Path:
    """``.<name>.<kind>-<pid>-<random>`` beside ``final`` (kind ``tmp`` or ``old``): the writer's pid lets a
    later run tell a dead writer's leftovers from a live one's."""
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale(final: str | os.PathLike[str]) -> list[Path]:
    """Remove the ``.tmp-`` / ``.old-`` leftovers (``temp_name``) of writers of ``final`` whose process is
    gone, e.g. killed while publishing; those of live processes, this one included, are left alone."""
    final = Path(final)
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(tmp|old)-(\d+)-[0-9a-f]{{8}}$")
    removed: list[Path] = []
    if not final.parent.is_dir():
        return removed
    for entry in final.parent.iterdir():
        match = pattern.match(entry.name)
        if match is None or _alive(int(match.group(2))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (one owned by another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``final`` when the block exits without error
    (leftovers of earlier writers of ``final`` that died are removed first)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = temp_name(final, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = temp_name(final, "old")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
