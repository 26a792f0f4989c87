"""SequenceDataset windows against a per-sample reference, Normalizer, returns-to-go, D4RL scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffctl.datasets import EpisodeStore, Normalizer, SequenceDataset
from diffctl.datasets.scores import REFERENCE_SCORES, normalized_score, reference_task
from diffctl.datasets.sequence import discounted_returns_to_go


def _store(lengths=(7, 3, 12), obs_dim=4, seed=0) -> EpisodeStore:
    rng = np.random.default_rng(seed)
    store = EpisodeStore.memory()
    for t in lengths:
        term = np.zeros(t, dtype=bool)
        term[-1] = True
        store.add_episode(
            {
                "observations": rng.normal(size=(t, obs_dim)).astype(np.float32),
                "actions": rng.normal(size=(t, 2)).astype(np.float32),
                "rewards": rng.normal(size=t).astype(np.float32),
                "terminals": term,
                "infos": {"goal": rng.normal(size=(t, 2)).astype(np.float32)},
            }
        )
    return store


def _reference_windows(store: EpisodeStore, h: int, to: int, ta: int) -> list[tuple[int, int]]:
    out = []
    for e, length in enumerate(store.episode_lengths):
        for s in range(-(to - 1), int(length) - h + (ta - 1) + 1):
            out.append((e, s))
    return out


@pytest.mark.parametrize(("h", "to", "ta"), [(8, 2, 4), (4, 1, 1), (16, 3, 8), (1, 1, 1)])
def test_windows_match_per_sample_reference(h: int, to: int, ta: int) -> None:
    store = _store()
    ds = SequenceDataset(store, horizon=h, n_obs_steps=to, n_action_steps=ta, goal="task", next_obs=True)
    ref = _reference_windows(store, h, to, ta)
    assert len(ds) == len(ref)
    batch = ds.get_batch(np.arange(len(ds)))
    assert batch["obs"].shape == (len(ds), to, 4) and batch["obs"].dtype == torch.float32
    assert batch["actions"].shape == (len(ds), h, 2)
    rtg_all = discounted_returns_to_go(store.array("rewards"), store.episode_ends, 0.99)
    for i, (e, s) in enumerate(ref):
        ep = store.episode(e)
        length = len(ep["actions"])
        steps = np.arange(s, s + h)
        clipped = np.clip(steps, 0, length - 1)
        np.testing.assert_array_equal(batch["actions"][i].numpy(), ep["actions"][clipped])
        np.testing.assert_array_equal(batch["obs"][i].numpy(), ep["observations"][clipped[:to]])
        np.testing.assert_array_equal(batch["action_mask"][i].numpy(), (steps >= 0) & (steps < length))
        np.testing.assert_array_equal(batch["obs_mask"][i].numpy(), (steps[:to] >= 0))
        cur = clipped[to - 1]
        np.testing.assert_array_equal(batch["goal"][i].numpy(), ep["infos/goal"][cur])
        nxt = np.minimum(np.clip(steps[:to], 0, None) + 1, length - 1)
        np.testing.assert_array_equal(batch["next_obs"][i].numpy(), ep["observations"][nxt])
        valid = (steps >= 0) & (steps < length)
        np.testing.assert_array_equal(batch["rewards"][i].numpy(), np.where(valid, ep["rewards"][clipped], 0))
        assert batch["returns"][i].item() == pytest.approx(rtg_all[store.episode_slice(e)][cur], rel=1e-5)
        np.testing.assert_array_equal(batch["terminals"][i].numpy(), ep["terminals"][clipped] & valid)


def test_returns_to_go_matches_loop() -> None:
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=300)
    ends = np.array([1, 150, 300])
    for gamma in (0.0, 0.5, 0.99, 1.0):
        got = discounted_returns_to_go(rewards, ends, gamma)
        start = 0
        for end in ends:
            acc = 0.0
            for t in range(end - 1, start - 1, -1):
                acc = rewards[t] + gamma * acc
                assert got[t] == pytest.approx(acc, rel=1e-9, abs=1e-9)
            start = end


def test_hindsight_goal_is_future_state_of_same_episode() -> None:
    store = _store(lengths=(20, 30))
    ds = SequenceDataset(store, horizon=4, n_obs_steps=2, goal="hindsight", goal_dims=[0, 1], seed=3)
    obs = store.array("observations")
    idx = np.arange(len(ds))
    batch = ds.get_batch(idx, rng=np.random.default_rng(0))
    for i in idx:
        e = ds.episode_of(i)
        sl = store.episode_slice(int(e))
        cur = sl.start + np.clip(ds._rel_start[i] + 1, 0, None)
        matches = np.where((obs[cur : sl.stop, :2] == batch["goal"][i].numpy()).all(axis=1))[0]
        assert matches.size >= 1
    again = ds.get_batch(idx, rng=np.random.default_rng(0))
    torch.testing.assert_close(again["goal"], batch["goal"])


def test_dict_observations_and_split() -> None:
    store = EpisodeStore.memory()
    for t in (6, 9, 5):
        store.add_episode(
            {
                "obs": {"img": np.zeros((t, 3, 8, 8), np.uint8), "state": np.ones((t, 2))},
                "action": np.ones((t, 2)),
            }
        )
    ds = SequenceDataset(
        store,
        horizon=4,
        n_obs_steps=2,
        n_action_steps=2,
        obs_keys=("obs/img", "obs/state"),
        action_key="action",
    )
    batch = ds.sample(5)
    assert set(batch["obs"]) == {"obs/img", "obs/state"}
    assert batch["obs"]["obs/img"].shape == (5, 2, 3, 8, 8) and batch["obs"]["obs/img"].dtype == torch.uint8
    train, val = ds.split(0.34, seed=0)
    assert set(train.episode_of(range(len(train)))).isdisjoint(val.episode_of(range(len(val))))
    assert len(train) + len(val) == len(ds)


def test_sequence_bad_input() -> None:
    store = _store()
    with pytest.raises(ValueError, match=r"missing key\(s\) \['pixels'\]"):
        SequenceDataset(store, horizon=4, obs_keys=("pixels",))
    with pytest.raises(ValueError, match="infos/goal"):
        SequenceDataset(
            EpisodeStore.from_arrays({"observations": np.ones((3, 1)), "actions": np.ones((3, 1))}, [3]),
            horizon=2,
            goal="task",
        )
    with pytest.raises(ValueError, match="no window of horizon 40"):
        SequenceDataset(store, horizon=40)
    with pytest.raises(ValueError, match="unknown goal mode"):
        SequenceDataset(store, horizon=4, goal="future")
    with pytest.raises(IndexError):
        SequenceDataset(store, horizon=4).get_batch([10_000])


def test_torch_indices_and_getitem() -> None:
    ds = SequenceDataset(_store(), horizon=4, n_obs_steps=2, n_action_steps=2)
    a = ds.get_batch(torch.tensor([3, 0, 5]))
    b = ds.get_batch(np.array([3, 0, 5]))
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    torch.testing.assert_close(ds[5]["actions"], b["actions"][2])


@pytest.mark.parametrize("mode", ["limits", "gaussian"])
def test_normalizer_round_trip(mode: str) -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 3)) * [1.0, 10.0, 0.0] + [0.0, 5.0, 2.0]
    norm = Normalizer.fit(data, mode=mode)
    out = norm.normalize(data)
    if mode == "limits":
        np.testing.assert_allclose(out[:, :2].min(0), -1.0, atol=1e-12)
        np.testing.assert_allclose(out[:, :2].max(0), 1.0, atol=1e-12)
    else:
        np.testing.assert_allclose(out[:, :2].mean(0), 0.0, atol=1e-9)
        np.testing.assert_allclose(out[:, :2].std(0), 1.0, atol=1e-9)
    np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-12)
    np.testing.assert_allclose(norm.unnormalize(out), data, atol=1e-9)
    t = torch.tensor(data, dtype=torch.float32).reshape(50, 10, 3)
    nt = norm.normalize(t)
    assert isinstance(nt, torch.Tensor) and nt.dtype == torch.float32
    np.testing.assert_allclose(nt.reshape(500, 3).numpy(), out, atol=1e-5)
    torch.testing.assert_close(norm.unnormalize(nt), t, atol=1e-4, rtol=1e-5)
    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(again.normalize(data), out)


def test_normalizer_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        Normalizer.fit(np.array([[1.0], [np.nan]]), name="actions")
    with pytest.raises(ValueError, match="unknown normalizer mode"):
        Normalizer.fit(np.ones((3, 2)), mode="minmax")
    with pytest.raises(ValueError, match="last dimension 2"):
        Normalizer.fit(np.ones((3, 2))).normalize(np.ones((4, 3)))
    with pytest.raises(ValueError, match="missing keys"):
        Normalizer.from_dict({"mode": "limits"})


def test_normalized_scores() -> None:
    assert normalized_score("hopper", 3234.3) == pytest.approx(100.0)
    assert normalized_score("hopper-medium-replay", -20.272305) == pytest.approx(0.0)
    assert normalized_score("maze2d-umaze", (23.85 + 161.86) / 2) == pytest.approx(50.0)
    np.testing.assert_allclose(
        normalized_score("walker2d-medium-expert-v2", np.array([1.629008, 4592.3])), [0, 100]
    )
    assert reference_task("halfcheetah-expert") == "halfcheetah"
    assert set(REFERENCE_SCORES) == {
        "hopper",
        "halfcheetah",
        "walker2d",
        "maze2d-umaze",
        "maze2d-medium",
        "maze2d-large",
    }
    with pytest.raises(ValueError, match="ant"):
        normalized_score("ant-medium", 100.0)
