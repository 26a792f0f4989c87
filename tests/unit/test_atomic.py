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
