"""EpisodeStore: layout, round trips, atomic create, crash-safe append, zarr v2 stores, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

from diffctl.datasets import EpisodeStore


def _episode(t: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(t, 4)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(t, 2)).astype(np.float32),
        "rewards": rng.normal(size=t).astype(np.float32),
        "terminals": np.zeros(t, dtype=bool),
        "infos": {"goal": rng.normal(size=(t, 2))},
    }


def test_create_open_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    episodes = [_episode(t, seed=t) for t in (5, 1, 9)]
    with EpisodeStore.create(path, attrs={"task": "maze2d-umaze"}) as store:
        for ep in episodes:
            store.add_episode(ep)
        store.attrs["expert_success"] = 0.5
    store = EpisodeStore.open(path)
    assert store.num_episodes == 3
    assert store.episode_lengths.tolist() == [5, 1, 9]
    assert store.keys == ["actions", "infos/goal", "observations", "rewards", "terminals"]
    assert store.attrs == {"task": "maze2d-umaze", "expert_success": 0.5}
    for i, ep in enumerate(episodes):
        got = store.episode(i)
        np.testing.assert_array_equal(got["observations"], ep["observations"])
        np.testing.assert_array_equal(got["infos/goal"], ep["infos"]["goal"])
        assert got["terminals"].dtype == bool
    np.testing.assert_array_equal(store.array("actions"), np.concatenate([e["actions"] for e in episodes]))
    root = zarr.open_group(str(path), mode="r")
    assert root["meta/episode_ends"][:].tolist() == [5, 6, 15]
    assert root["data/observations"].shape == (15, 4)
    assert root["data/infos/goal"].shape == (15, 2)


def test_open_is_read_only(tmp_path: Path) -> None:
    EpisodeStore.from_arrays({"x": np.arange(6.0)}, [2, 6], path=tmp_path / "s.zarr")
    store = EpisodeStore.open(tmp_path / "s.zarr")
    with pytest.raises(ValueError, match="read-only"):
        store.add_episode({"x": np.ones(2)})


def test_memory_store_and_large_flush() -> None:
    store = EpisodeStore.memory(attrs={"a": 1})
    store.add_episode({"x": np.arange(70000, dtype=np.float32)})
    store.add_episode({"x": np.arange(3, dtype=np.float32)})
    assert store.num_episodes == 2
    assert store.episode_lengths.tolist() == [70000, 3]
    np.testing.assert_array_equal(store.episode(1)["x"], [0, 1, 2])
    assert store.attrs == {"a": 1}


def test_append_mode(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    EpisodeStore.from_arrays(_flat(_episode(4)), [4], path=path)
    with EpisodeStore.open(path, mode="a") as store:
        store.add_episode(_episode(3, seed=1))
    store = EpisodeStore.open(path)
    assert store.episode_lengths.tolist() == [4, 3]
    np.testing.assert_array_equal(store.episode(1)["actions"], _episode(3, seed=1)["actions"])


def _flat(ep: dict) -> dict:
    out = {k: v for k, v in ep.items() if k != "infos"}
    out["infos/goal"] = ep["infos"]["goal"]
    return out


def test_append_interrupted_after_data_write(tmp_path: Path) -> None:
    """A writer killed between the data write and the episode_ends write leaves the old episodes intact."""
    path = tmp_path / "s.zarr"
    EpisodeStore.from_arrays({"x": np.arange(5.0)}, [2, 5], path=path)
    root = zarr.open_group(str(path), mode="a")
    root["data/x"].resize((9,))
    root["data/x"][5:9] = 99.0
    store = EpisodeStore.open(path)
    assert store.num_steps == 5 and store.episode_lengths.tolist() == [2, 3]
    np.testing.assert_array_equal(store.array("x"), np.arange(5.0))
    with EpisodeStore.open(path, mode="a") as store:
        store.add_episode({"x": np.array([7.0, 8.0])})
    np.testing.assert_array_equal(EpisodeStore.open(path).array("x"), [0, 1, 2, 3, 4, 7, 8])


def test_killed_writer_leaves_no_store(tmp_path: Path) -> None:
    path = tmp_path / "killed.zarr"
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from diffctl.datasets import EpisodeStore
        s = EpisodeStore.create({str(path)!r})
        for i in range(3):
            s.add_episode({{"x": np.ones((70000, 1), np.float32)}})
        s.flush()
        os._exit(1)
        """
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", script], check=False, cwd=root, env={"PYTHONPATH": str(root)})
    assert not path.exists()
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.zarr.tmp-")]
    assert len(temps) == 1
    with pytest.raises(FileNotFoundError):
        EpisodeStore.open(path)
    with pytest.raises(ValueError, match="incomplete"):
        EpisodeStore.open(temps[0])
    live = tmp_path / f".killed.zarr.tmp-{os.getppid()}-0123abcd"  # a writer that is still running
    live.mkdir()
    with EpisodeStore.create(path) as store:  # the next writer of the same target
        store.add_episode({"x": np.zeros((2, 1), np.float32)})
    assert not temps[0].exists() and live.is_dir()  # the dead writer's leftover is gone, the live one's not
    assert EpisodeStore.open(path).num_steps == 2


def test_exception_in_with_block_discards(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError), EpisodeStore.create(path) as store:
        store.add_episode({"x": np.ones(3)})
        raise RuntimeError("boom")
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_path_refused_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    EpisodeStore.from_arrays({"x": np.ones(3)}, [3], path=path)
    with pytest.raises(FileExistsError, match=r"s\.zarr"):
        EpisodeStore.create(path)
    EpisodeStore.from_arrays({"x": np.zeros(4)}, [4], path=path, overwrite=True)
    assert EpisodeStore.open(path).num_steps == 4
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]


def test_zarr_v2_diffusion_policy_layout(tmp_path: Path) -> None:
    """A ReplayBuffer-style store written in zarr format 2 (like diffusion_policy's Push-T zarr) opens."""
    path = tmp_path / "pusht_cchi_v7_replay.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    data.create_array("state", data=np.arange(20, dtype=np.float32).reshape(10, 2), chunks=(4, 2))
    data.create_array("action", data=np.ones((10, 2), dtype=np.float32), chunks=(4, 2))
    data.create_array("img", data=np.zeros((10, 8, 8, 3), dtype=np.uint8), chunks=(4, 8, 8, 3))
    root.create_group("meta").create_array("episode_ends", data=np.array([3, 10], dtype=np.int64))
    store = EpisodeStore.open(path)
    assert store.num_episodes == 2 and store.keys == ["action", "img", "state"]
    assert store.episode(1)["img"].shape == (7, 8, 8, 3)
    np.testing.assert_array_equal(store.episode(0)["state"], np.arange(6, dtype=np.float32).reshape(3, 2))
    copy = store.copy_to(tmp_path / "copy.zarr")
    assert copy.episode_lengths.tolist() == [3, 7]


@pytest.mark.parametrize(
    ("episode", "match"),
    [
        ({"x": np.ones(3), "y": np.ones(4)}, "mismatched lengths"),
        ({"x": np.array([1.0, np.nan])}, "'x' contains NaN"),
        ({"x": np.array([1.0, np.inf])}, "'x' contains NaN or inf"),
        ({"x": np.ones(0)}, "empty"),
        ({}, "no arrays"),
        ({"x": np.float32(1.0)}, "'x' is a scalar"),
    ],
)
def test_bad_episodes(episode: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EpisodeStore.memory().add_episode(episode)


def test_inconsistent_keys_and_shapes() -> None:
    store = EpisodeStore.memory()
    store.add_episode({"x": np.ones((2, 3)), "y": np.ones(2)})
    with pytest.raises(ValueError, match="differ from the store's keys"):
        store.add_episode({"x": np.ones((2, 3))})
    with pytest.raises(ValueError, match="'x' has per-step shape"):
        store.add_episode({"x": np.ones((2, 4)), "y": np.ones(2)})


def test_open_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.zarr"):
        EpisodeStore.open(tmp_path / "nope.zarr")
    (tmp_path / "file.zarr").write_text("not zarr")
    with pytest.raises(ValueError, match=r"file\.zarr"):
        EpisodeStore.open(tmp_path / "file.zarr")
    root = zarr.open_group(str(tmp_path / "nometa.zarr"), mode="w")
    root.create_group("data")
    with pytest.raises(ValueError, match="missing group 'meta'"):
        EpisodeStore.open(tmp_path / "nometa.zarr")


def test_truncated_store_detected(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    EpisodeStore.from_arrays({"x": np.arange(10.0)}, [4, 10], path=path)
    zarr.open_group(str(path), mode="a")["data/x"].resize((6,))
    with pytest.raises(ValueError, match="'data/x' has 6 steps"):
        EpisodeStore.open(path)


def test_corrupt_chunk_names_key(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    EpisodeStore.from_arrays({"obs": np.random.default_rng(0).normal(size=(50, 3))}, [50], path=path)
    chunks = [p for p in (path / "data" / "obs").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks
    chunks[0].write_bytes(b"garbage")
    with pytest.raises(ValueError, match="'data/obs'"):
        EpisodeStore.open(path).episode(0)


def test_checksums_recorded_at_publish_catch_a_missing_or_flipped_chunk(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    values = np.arange(140000, dtype=np.float32).reshape(-1, 1)  # three chunks of the step axis
    with EpisodeStore.create(path) as store:
        store.add_episode({"x": values, "y": np.zeros((140000, 1), np.float32)})
    report = EpisodeStore.open(path).verify()
    assert report["checked"] and report["arrays"] == ["x", "y"] and report["chunks"] >= 4
    chunk = path / "data" / "x" / "c" / "1" / "0"
    raw = chunk.read_bytes()
    chunk.unlink()  # a missing chunk file reads as zeros: the checksum catches it
    with pytest.raises(ValueError, match=r"array 'data/x' chunk 1 \(rows 65536-131071\) differs"):
        EpisodeStore.open(path).array("x")
    from diffctl.cli import main

    assert main(["data", "info", str(path), "--verify"]) == 1  # the CLI says the same in one line
    flipped = bytearray(raw)
    flipped[len(flipped) // 2] ^= 0xFF
    chunk.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="data/x"):  # undecodable, or decoded to other values
        EpisodeStore.open(path).verify()
    chunk.write_bytes(raw)
    np.testing.assert_array_equal(EpisodeStore.open(path).array("x"), values)


def test_stores_without_recorded_checksums_still_open(tmp_path: Path) -> None:
    path = tmp_path / "old.zarr"
    with EpisodeStore.create(path) as store:
        store.add_episode({"x": np.ones((5, 1), np.float32)})
    root = zarr.open_group(store=zarr.storage.LocalStore(str(path)), mode="a")
    reserved = dict(root.attrs["diffctl"])
    del reserved["checksums"]  # as written by diffctl before checksums were recorded
    root.attrs["diffctl"] = reserved
    store = EpisodeStore.open(path)
    assert store.array("x").shape == (5, 1) and store.verify()["checked"] is False
