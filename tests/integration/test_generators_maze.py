"""End-to-end: a tiny maze2d dataset, its layout, rewards and card."""

import numpy as np
import pytest

from diffctl.datasets.generators import generate


def _tiny(path, seed=0, force=False):
    return generate(
        "maze2d-umaze", path, episodes=3, seed=seed, force=force, streams=2, eval_episodes=4, progress=False
    )


def test_tiny_maze_dataset(tmp_path):
    store = _tiny(tmp_path / "umaze.zarr")
    assert store.num_episodes == 3
    assert list(store.episode_lengths) == [300, 300, 300]
    for key in (
        "observations",
        "actions",
        "rewards",
        "terminals",
        "timeouts",
        "infos/goal",
        "infos/qpos",
        "infos/qvel",
    ):
        assert key in store.keys
    ep = store.episode(1)
    assert ep["observations"].shape == (300, 4) and ep["actions"].shape == (300, 2)
    assert ep["timeouts"][-1] and not ep["timeouts"][:-1].any() and not ep["terminals"].any()
    assert np.abs(ep["actions"]).max() <= 1.0
    np.testing.assert_allclose(ep["observations"][:, :2], ep["infos/qpos"], atol=1e-5)
    next_pos = ep["infos/qpos"][1:]
    expected = np.linalg.norm(next_pos - ep["infos/goal"][:-1], axis=-1) <= 0.5
    np.testing.assert_array_equal(ep["rewards"][:-1].astype(bool), expected)
    card = store.attrs
    assert card["task"] == "maze2d-umaze" and card["seed"] == 0
    assert card["budgets"]["steps"] == 900
    assert card["behaviour_policy"]["noiseless_expert"]["success_rate"] == 1.0
    assert card["generation_seconds"] > 0 and "mujoco" in card["versions"]


def test_same_seed_same_data_and_existing_out_refused(tmp_path):
    a = _tiny(tmp_path / "a.zarr", seed=7)
    b = _tiny(tmp_path / "b.zarr", seed=7)
    np.testing.assert_array_equal(a.array("actions"), b.array("actions"))
    with pytest.raises(FileExistsError, match=r"a\.zarr"):
        _tiny(tmp_path / "a.zarr", seed=7)
    c = _tiny(tmp_path / "a.zarr", seed=8, force=True)
    assert not np.array_equal(c.array("actions"), b.array("actions"))


def test_unknown_dataset_rejected(tmp_path):
    with pytest.raises(ValueError, match="maze2d-umaze"):
        generate("maze2d-huge", tmp_path / "x.zarr")
    with pytest.raises(ValueError, match="episodes"):
        generate("maze2d-umaze", tmp_path / "x.zarr", episodes=0)
