"""diffctl.atomic: published files and directories appear whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffctl.atomic import atomic_dir, atomic_path, write_json, write_text


def test_atomic_path_keeps_suffix_replaces_on_success_and_cleans_up_on_error(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "plot.png"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.suffix == ".png" and tmp != final
        tmp.write_bytes(b"new")
    assert final.read_bytes() == b"new"
    with pytest.raises(RuntimeError, match="writer died"), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert final.read_bytes() == b"new"  # the previous version survives
    assert sorted(p.name for p in final.parent.iterdir()) == ["plot.png"]  # no temp file left


def test_write_text_json_and_dir(tmp_path: Path) -> None:
    write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    write_json(tmp_path / "b.json", {"x": Path("p")})
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": "p"}
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("1")
    with pytest.raises(ValueError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("2")
        raise ValueError
    assert (tmp_path / "d" / "f").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "d"]


def test_atomic_dir_removes_leftovers_of_dead_writers_only(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from diffctl.atomic import atomic_dir, remove_stale

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".agent.tmp-{dead_pid}-0123abcd", tmp_path / f".agent.old-{dead_pid}-89abcdef"]
    live = tmp_path / f".agent.tmp-{os.getpid()}-00000000"
    other = tmp_path / f".other.tmp-{dead_pid}-0123abcd"  # another target's: not ours to touch
    for d in (*stale, live, other):
        d.mkdir()
    with atomic_dir(tmp_path / "agent") as tmp:
        (tmp / "x").write_text("1")
    assert (tmp_path / "agent" / "x").read_text() == "1"
    assert not any(d.exists() for d in stale) and live.is_dir() and other.is_dir()
    assert remove_stale(tmp_path / "other") == [other]
