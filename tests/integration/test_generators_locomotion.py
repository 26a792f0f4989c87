"""Locomotion generator smoke test: a few hundred SAC steps, checkpoint/resume, cache reuse, datasets."""

import importlib.util
import json

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("stable_baselines3") is None, reason="needs [rl]")

TINY = {"sac_steps": 300, "checkpoint_every": 100, "learning_starts": 50, "progress": False}


def test_sac_run_resumes_and_is_cached(tmp_path):
    from diffctl.datasets.generators.locomotion import checkpoints, train_sac

    run = train_sac("hopper", seed=0, root=tmp_path, stop_after=200, **TINY)
    assert [c["step"] for c in checkpoints(run)] == [100, 200]
    assert not (run / "done.json").exists()
    run = train_sac("hopper", seed=0, root=tmp_path, **TINY)
    done = json.loads((run / "done.json").read_text())
    assert done["resumed_from"] == 200
    assert [c["step"] for c in checkpoints(run)] == [100, 200, 300]
    stamp = (run / "done.json").stat().st_mtime_ns
    assert train_sac("hopper", seed=0, root=tmp_path, **TINY) == run
    assert (run / "done.json").stat().st_mtime_ns == stamp


def test_locomotion_datasets(tmp_path):
    from diffctl.datasets.generators import generate

    opts = {**TINY, "root": tmp_path / "cache", "steps": 150}
    medium = generate("hopper-medium", tmp_path / "m.zarr", **opts)
    assert medium.num_steps == 150
    ep = medium.episode(0)
    assert ep["observations"].shape[1] == 11 and ep["actions"].shape[1] == 3
    assert ep["infos/qpos"].shape[1] == 6
    ends = ep["terminals"][-1] or ep["timeouts"][-1]
    assert ends and not (ep["terminals"][:-1] | ep["timeouts"][:-1]).any()
    np.testing.assert_allclose(ep["next_observations"][:-1], ep["observations"][1:])
    card = medium.attrs
    assert card["dataset"] == "hopper-medium" and card["budgets"]["sac_steps"] == 300
    assert card["budgets"]["d4rl"]["sac_steps"] == 1_000_000
    replay = generate("hopper-medium-replay", tmp_path / "r.zarr", **opts)
    assert replay.num_steps <= card["behaviour_policy"]["medium_checkpoint"]["step"]
    both = generate("hopper-medium-expert", tmp_path / "me.zarr", **opts)
    assert both.num_steps == 300


def test_bad_budget(tmp_path):
    from diffctl.datasets.generators import generate

    with pytest.raises(ValueError, match="budget"):
        generate("hopper-expert", tmp_path / "x.zarr", budget="huge")
