"""D4RL / Minari / zarr import, D4RL export and the ``diffctl data`` command on files written here in the
exact layouts of those projects."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from diffctl.cli import main
from diffctl.datasets import EpisodeStore, export_d4rl, import_d4rl, import_dataset, import_minari
from diffctl.datasets.d4rl import episode_ends_from_flags


def write_d4rl(path: Path, *, n: int = 25, timeouts: bool = True, ends=(7, 15), terminal_at=(10,)) -> dict:
    """A maze2d-style D4RL file: flat arrays, infos/ group, metadata/ group, file attrs."""
    rng = np.random.default_rng(0)
    data = {
        "observations": rng.normal(size=(n, 4)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.zeros(n, dtype=bool),
        "infos/goal": rng.normal(size=(n, 2)),
        "infos/qpos": rng.normal(size=(n, 2)),
        "infos/qvel": rng.normal(size=(n, 2)),
    }
    data["terminals"][list(terminal_at)] = True
    data["timeouts"][[e - 1 for e in ends]] = True
    with h5py.File(path, "w") as f:
        for key, values in data.items():
            if key == "timeouts" and not timeouts:
                continue
            f.create_dataset(key, data=values)
        f.create_dataset("metadata/algorithm", data=np.bytes_("waypoint_controller"))
        f.create_dataset("metadata/policy/fc0/weight", data=np.zeros((3, 3)))
        f.attrs["env_name"] = "maze2d-umaze-v1"
    if not timeouts:
        del data["timeouts"]
    return data


def write_minari(root: Path, lengths=(5, 3), dict_obs: bool = False) -> list[dict]:
    """A Minari dataset directory: data/main_data.hdf5 with episode_N groups and data/metadata.json."""
    rng = np.random.default_rng(1)
    (root / "data").mkdir(parents=True)
    episodes = []
    with h5py.File(root / "data" / "main_data.hdf5", "w") as f:
        f.attrs["total_episodes"] = len(lengths)
        for i, t in enumerate(lengths):
            g = f.create_group(f"episode_{i}")
            g.attrs["id"] = i
            g.attrs["total_steps"] = t
            ep = {
                "observations": rng.normal(size=(t + 1, 3)).astype(np.float32),
                "achieved_goal": rng.normal(size=(t + 1, 2)),
                "actions": rng.normal(size=(t, 2)).astype(np.float32),
                "rewards": rng.normal(size=t),
                "terminations": np.eye(t, dtype=bool)[-1] if i == 0 else np.zeros(t, bool),
                "truncations": np.zeros(t, bool) if i == 0 else np.eye(t, dtype=bool)[-1],
                "success": rng.random(t + 1) > 0.5,
            }
            if dict_obs:
                g.create_dataset("observations/observation", data=ep["observations"])
                g.create_dataset("observations/achieved_goal", data=ep["achieved_goal"])
            else:
                g.create_dataset("observations", data=ep["observations"])
            for key in ("actions", "rewards", "terminations", "truncations"):
                g.create_dataset(key, data=ep[key])
            g.create_dataset("infos/success", data=ep["success"])
            episodes.append(ep)
    (root / "data" / "metadata.json").write_text(json.dumps({"dataset_id": "test/tiny-v0", "total_steps": 8}))
    return episodes


def test_d4rl_import_splits_at_terminals_and_timeouts(tmp_path: Path) -> None:
    data = write_d4rl(tmp_path / "maze2d-umaze-v1.hdf5")
    store = import_d4rl(tmp_path / "maze2d-umaze-v1.hdf5", tmp_path / "s.zarr", task="maze2d-umaze")
    assert store.episode_ends.tolist() == [7, 11, 15, 25]
    assert set(store.keys) == {
        "observations",
        "actions",
        "rewards",
        "terminals",
        "timeouts",
        "infos/goal",
        "infos/qpos",
        "infos/qvel",
    }
    np.testing.assert_array_equal(store.array("infos/goal"), data["infos/goal"])
    np.testing.assert_array_equal(store.episode(1)["observations"], data["observations"][7:11])
    assert store.attrs["task"] == "maze2d-umaze"
    assert store.attrs["d4rl_metadata"]["env_name"] == "maze2d-umaze-v1"
    assert store.attrs["d4rl_metadata"]["algorithm"] == "waypoint_controller"


def test_d4rl_without_timeouts_uses_episode_limit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_d4rl(tmp_path / "old.hdf5", n=700, timeouts=False, terminal_at=(10,))
    store = import_d4rl(tmp_path / "old.hdf5", task="maze2d-umaze")
    assert store.episode_ends.tolist() == [11, 311, 611, 700]
    assert "every 300 steps" in capsys.readouterr().err
    assert store.array("timeouts")[[310, 610]].all() and not store.array("timeouts")[10]
    with pytest.raises(ValueError, match="no 'timeouts' key"):
        import_d4rl(tmp_path / "old.hdf5")


def test_episode_ends_from_flags() -> None:
    terminals = np.array([0, 0, 1, 0, 0, 0, 0], bool)
    assert episode_ends_from_flags(terminals, None, 2).tolist() == [2, 3, 5, 7]
    assert episode_ends_from_flags(terminals, np.eye(7, dtype=bool)[4], None).tolist() == [3, 5, 7]


def test_d4rl_export_round_trip(tmp_path: Path) -> None:
    write_d4rl(tmp_path / "src.hdf5")
    store = import_d4rl(tmp_path / "src.hdf5", tmp_path / "s.zarr")
    export_d4rl(store, tmp_path / "out.hdf5")
    with h5py.File(tmp_path / "out.hdf5", "r") as f:
        assert f["observations"].shape == (25, 4) and f["infos/goal"].shape == (25, 2)
        assert f["terminals"].dtype == bool and f["timeouts"].dtype == bool
    again = import_d4rl(tmp_path / "out.hdf5")
    assert again.episode_ends.tolist() == store.episode_ends.tolist()
    for key in store.keys:
        np.testing.assert_array_equal(again.array(key), store.array(key))
    with pytest.raises(FileExistsError):
        export_d4rl(store, tmp_path / "out.hdf5")


def test_export_adds_timeouts_for_generated_stores(tmp_path: Path) -> None:
    store = EpisodeStore.memory()
    for t, done in ((4, True), (6, False)):
        term = np.zeros(t, bool)
        term[-1] = done
        store.add_episode(
            {
                "observations": np.ones((t, 2)),
                "actions": np.ones((t, 1)),
                "rewards": np.ones(t),
                "terminals": term,
            }
        )
    export_d4rl(store, tmp_path / "g.hdf5")
    with h5py.File(tmp_path / "g.hdf5", "r") as f:
        assert np.flatnonzero(f["timeouts"][()]).tolist() == [9]
        assert np.flatnonzero(f["terminals"][()]).tolist() == [3]


@pytest.mark.parametrize("dict_obs", [False, True])
def test_minari_import(tmp_path: Path, dict_obs: bool) -> None:
    episodes = write_minari(tmp_path / "tiny-v0", dict_obs=dict_obs)
    store = import_minari(tmp_path / "tiny-v0", tmp_path / "s.zarr")
    assert store.episode_lengths.tolist() == [5, 3]
    obs_key = "observations/observation" if dict_obs else "observations"
    ep = store.episode(1)
    np.testing.assert_array_equal(ep[obs_key], episodes[1]["observations"][:3])
    np.testing.assert_array_equal(ep["next_" + obs_key], episodes[1]["observations"][1:])
    np.testing.assert_array_equal(ep["infos/success"], episodes[1]["success"][:3])
    assert ep["timeouts"].tolist() == [False, False, True] and not ep["terminals"].any()
    assert store.episode(0)["terminals"].tolist() == [False] * 4 + [True]
    if dict_obs:
        assert "observations/achieved_goal" in store.keys
    assert store.attrs["minari_metadata"]["dataset_id"] == "test/tiny-v0"


def test_minari_bad_files(tmp_path: Path) -> None:
    write_minari(tmp_path / "a")
    with h5py.File(tmp_path / "a" / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1/observations"]
        f.create_dataset("episode_1/observations", data=np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"episode_1.*'observations' has 3 rows, expected T\+1 = 4"):
        import_minari(tmp_path / "a")
    write_minari(tmp_path / "b")
    with h5py.File(tmp_path / "b" / "data" / "main_data.hdf5", "a") as f:
        del f["episode_0/rewards"]
    with pytest.raises(ValueError, match=r"episode_0: missing key\(s\) \['rewards'\]"):
        import_minari(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match=r"main_data\.hdf5"):
        import_minari(tmp_path)


def test_zarr_import_of_v2_replay_buffer(tmp_path: Path) -> None:
    src = tmp_path / "replay.zarr"
    root = zarr.open_group(str(src), mode="w", zarr_format=2)
    root.create_array("data/state", data=np.arange(10, dtype=np.float32).reshape(5, 2))
    root.create_array("data/action", data=np.ones((5, 2), dtype=np.float32))
    root.create_array("meta/episode_ends", data=np.array([2, 5]))
    store = import_dataset("zarr", src, tmp_path / "out.zarr", task="pusht")
    assert store.episode_lengths.tolist() == [2, 3] and store.attrs["task"] == "pusht"
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r").metadata.zarr_format == 3


def test_bad_d4rl_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.hdf5"):
        import_d4rl(tmp_path / "missing.hdf5")
    (tmp_path / "junk.hdf5").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"junk\.hdf5.*not a readable HDF5"):
        import_d4rl(tmp_path / "junk.hdf5")
    write_d4rl(tmp_path / "full.hdf5")
    raw = (tmp_path / "full.hdf5").read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.hdf5"):
        import_d4rl(tmp_path / "cut.hdf5")
    with h5py.File(tmp_path / "nokey.hdf5", "w") as f:
        f.create_dataset("observations", data=np.ones((3, 2)))
    with pytest.raises(
        ValueError, match=r"nokey.hdf5: missing D4RL key\(s\) \['actions', 'rewards', 'terminals'\]"
    ):
        import_d4rl(tmp_path / "nokey.hdf5")
    write_d4rl(tmp_path / "len.hdf5")
    with h5py.File(tmp_path / "len.hdf5", "a") as f:
        del f["actions"]
        f.create_dataset("actions", data=np.ones((24, 2)))
    with pytest.raises(ValueError, match=r"len.hdf5: key\(s\) \['actions'\] have lengths"):
        import_d4rl(tmp_path / "len.hdf5")
    write_d4rl(tmp_path / "nan.hdf5")
    with h5py.File(tmp_path / "nan.hdf5", "a") as f:
        f["observations"][3, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"nan\.hdf5: key 'observations' contains NaN or inf \(first at step 3\)"
    ):
        import_d4rl(tmp_path / "nan.hdf5", tmp_path / "nan.zarr")
    assert not (tmp_path / "nan.zarr").exists()
    with pytest.raises(ValueError, match="unknown dataset format 'rlds'"):
        import_dataset("rlds", tmp_path / "full.hdf5")


def test_cli_import_info_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_d4rl(tmp_path / "src.hdf5")
    out = str(tmp_path / "s.zarr")
    assert (
        main(["data", "import", "d4rl", str(tmp_path / "src.hdf5"), "--out", out, "--task", "maze2d-umaze"])
        == 0
    )
    text = capsys.readouterr().out
    assert "episodes 4" in text and "steps 25" in text and "infos/goal" in text
    assert main(["data", "import", "d4rl", str(tmp_path / "src.hdf5"), "--out", out]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "import", "d4rl", str(tmp_path / "src.hdf5"), "--out", out, "--force"]) == 0
    capsys.readouterr()
    assert main(["data", "info", out, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 4 and summary["keys"]["observations"] == {"shape": [4], "dtype": "float32"}
    assert main(["data", "export", "d4rl", out, "--out", str(tmp_path / "e.hdf5")]) == 0
    assert (tmp_path / "e.hdf5").is_file()
    assert main(["data", "info", str(tmp_path / "nothing.zarr")]) == 1
    assert "does not exist" in capsys.readouterr().err
    write_minari(tmp_path / "m")
    assert main(["data", "import", "minari", str(tmp_path / "m"), "--out", str(tmp_path / "m.zarr")]) == 0


def test_cli_generate_tiny_maze_then_train_windows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """End to end: generate a tiny maze dataset, inspect it, window it with task goals, export, re-import."""
    pytest.importorskip("gymnasium_robotics")
    from diffctl.datasets import SequenceDataset

    out = tmp_path / "umaze.zarr"
    assert (
        main(["data", "generate", "maze2d-umaze", "--out", str(out), "--episodes", "2", "--seed", "1"]) == 0
    )
    assert "episodes 2" in capsys.readouterr().out
    assert main(["data", "generate", "maze2d-umaze", "--out", str(out), "--episodes", "2"]) == 1
    store = EpisodeStore.open(out)
    assert store.num_episodes == 2 and store.episode_lengths.tolist() == [300, 300]
    assert store.attrs["budgets"]["size"] is None  # --episodes wins over the recipe's size
    from diffctl.commands.data import _size_option

    assert _size_option("maze2d-large", "d4rl") == {"size": "d4rl"}
    assert _size_option("hopper-medium", "d4rl") == {"budget": "d4rl"}
    assert main(["data", "generate", "digits", "--out", str(tmp_path / "d.zarr"), "--size", "d4rl"]) == 1
    assert "--size applies to maze2d and locomotion datasets, not 'digits'" in capsys.readouterr().err
    ds = SequenceDataset(store, horizon=16, n_obs_steps=2, n_action_steps=8, goal="task")
    batch = ds.sample(32)
    assert batch["obs"].shape == (32, 2, 4) and batch["goal"].shape == (32, 2)
    assert float(batch["actions"].abs().max()) <= 1.0
    assert main(["data", "export", "d4rl", str(out), "--out", str(tmp_path / "u.hdf5")]) == 0
    again = import_d4rl(tmp_path / "u.hdf5")
    assert again.episode_ends.tolist() == [300, 600]
    np.testing.assert_array_equal(again.array("infos/goal"), store.array("infos/goal"))


def _rewrite(path: Path, key: str, make) -> None:
    """Replace ``key`` of a D4RL file with what ``make(f)`` creates there."""
    with h5py.File(path, "a") as f:
        del f[key]
        make(f)


@pytest.mark.parametrize(
    "key, make, message",
    [("observations", lambda f: f.create_group("observations").create_dataset("x", data=np.ones(3)),
      "key 'observations' is a group; expected an array"),
     ("observations", lambda f: f.create_dataset("observations", data=1.0), "key 'observations' is a scalar"),
     ("observations", lambda f: f.__setitem__("observations", h5py.ExternalLink("gone.hdf5", "/obs")),
      "key 'observations' is an external link to gone.hdf5:/obs"),
     ("rewards", lambda f: f.create_dataset("rewards", data=np.ones((25, 2))),
      "key 'rewards' has shape (25, 2); expected (25,) or (25, 1)"),
     ("actions", lambda f: f.create_dataset("actions", data=np.ones((25, 2), np.complex64)),
      "key 'actions' has dtype complex64; expected real numbers or booleans"),
     ("actions", lambda f: f.create_dataset("actions", data=np.array([b"x"] * 25)),
      "key 'actions' has dtype |S1; expected real numbers or booleans"),
     ("terminals", lambda f: f.create_dataset("terminals", data=np.r_[np.zeros(5), np.nan, np.zeros(19)]),
      "key 'terminals' holds NaN or inf flags (first at step 5); expected 0/1")],
)  # fmt: skip
def test_d4rl_files_with_bad_keys_are_refused_by_name(tmp_path: Path, key: str, make, message: str) -> None:
    path = tmp_path / "bad.hdf5"
    write_d4rl(path)
    _rewrite(path, key, make)
    with pytest.raises(ValueError) as err:
        import_d4rl(path, tmp_path / "bad.zarr")
    assert f"{path}: {message}" in str(err.value)
    assert not (tmp_path / "bad.zarr").exists()
