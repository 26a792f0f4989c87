"""World models: on a linear system with known dynamics both models learn the truth; rollout shapes, units
and errors."""

import numpy as np
import pytest
import torch

from diffctl.datasets import EpisodeStore
from diffctl.world_models import DiffusionWorldModel, MLPEnsembleWorldModel
from diffctl.world_models.data import WorldModelData

A = np.array([[0.9, 0.2], [-0.1, 0.95]])
B = np.array([[0.5], [0.3]])
C = np.array([1.0, -0.5])


def linear_store(episodes=40, steps=60, seed=0):
    """s' = A s + B a, r = C s; random actions in [-1, 1]."""
    rng = np.random.default_rng(seed)
    obs, act, rew = [], [], []
    for _ in range(episodes):
        s = rng.uniform(-1, 1, 2)
        for _ in range(steps):
            a = rng.uniform(-1, 1, 1)
            obs.append(s)
            act.append(a)
            rew.append(C @ s)
            s = A @ s + B @ a
    ends = np.arange(1, episodes + 1) * steps
    data = {"observations": np.array(obs, np.float32), "actions": np.array(act, np.float32),
            "rewards": np.array(rew, np.float32), "terminals": np.zeros(len(obs), np.float32)}  # fmt: skip
    return EpisodeStore.from_arrays(data, ends)


def truth(s, actions):
    states, rewards = [], []
    for a in actions:
        rewards.append(C @ s)
        s = A @ s + B @ a
        states.append(s)
    return np.array(states), np.array(rewards)


def fit(model, data, steps, lr=2e-3, batch=256):
    torch.manual_seed(0)
    model.fit(data)
    opt = torch.optim.Adam(model.network.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss, _ = model.loss(data.get_batch(torch.randint(0, len(data), (batch,), generator=g)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks: one thread is fastest and immune to other load
    try:
        store = linear_store()
        net = {"hidden": 128, "depth": 2}
        sampler = {"solver": "dpmpp_2m", "steps": 5}
        dwm = DiffusionWorldModel(state_dim=2, action_dim=1, segment=4, backbone_kwargs=net, sampler=sampler)
        ens = MLPEnsembleWorldModel(state_dim=2, action_dim=1, members=3, elites=2, hidden=64, depth=2,
                                    deterministic=True)  # fmt: skip
        yield store, fit(dwm, WorldModelData(store), 1500), fit(ens, WorldModelData(store), 1500)
    finally:
        torch.set_num_threads(threads)


def test_both_models_learn_a_linear_system(trained):
    _, dwm, ens = trained
    rng = np.random.default_rng(1)
    s0 = rng.uniform(-1, 1, (16, 2)).astype(np.float32)
    actions = rng.uniform(-1, 1, (16, 8, 1)).astype(np.float32)
    want = [truth(s, a) for s, a in zip(s0, actions, strict=True)]
    states = np.stack([w[0] for w in want])
    rewards = np.stack([w[1] for w in want])
    persistence = np.sqrt(((states - s0[:, None]) ** 2).mean())
    for model in (dwm, ens):
        out = model.rollout(s0, actions, generator=torch.Generator().manual_seed(0))
        err = np.sqrt(((out["observations"].numpy() - states) ** 2).mean())
        assert err < 0.2 * persistence, (type(model).__name__, err, persistence)
        assert np.sqrt(((out["rewards"].numpy() - rewards) ** 2).mean()) < 0.15
        assert out["terminals"].max() < 0.5


def test_rollout_shapes_and_closed_loop_with_a_chunk_policy(trained):
    _, dwm, ens = trained

    class Constant:
        n_obs_steps, n_action_steps, obs_dim, action_dim, goal_dim = 2, 4, 2, 1, 0
        calls = 0

        def predict_chunk(self, hist):
            assert hist.shape[1:] == (2, 2)
            Constant.calls += 1
            return torch.full((hist.shape[0], 9, 1), 0.5)

    s0 = torch.zeros(5, 2)
    for model in (dwm, ens):
        out = model.rollout(s0, torch.zeros(5, 7, 1))
        shapes = {"observations": (5, 7, 2), "rewards": (5, 7), "terminals": (5, 7), "actions": (5, 7, 1)}
        assert {k: tuple(v.shape) for k, v in out.items()} == shapes
        Constant.calls = 0
        closed = model.rollout(s0, policy=Constant(), horizon=10, generator=torch.Generator().manual_seed(0))
        assert closed["observations"].shape == (5, 10, 2) and torch.all(closed["actions"] == 0.5)
        assert Constant.calls == 3  # a chunk per 4 executed actions, as in the environment


def test_rollout_input_errors(trained, tmp_path):
    _, dwm, ens = trained
    with pytest.raises(ValueError, match=r"actions must have shape \(2, T >= 1, 1\)"):
        dwm.rollout(torch.zeros(2, 2), torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match=r"obs must have shape \(B, 2\)"):
        ens.rollout(torch.zeros(2, 3), torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="NaN"):
        dwm.rollout(torch.full((1, 2), float("nan")), torch.zeros(1, 3, 1))
    with pytest.raises(ValueError, match="exactly one of"):
        dwm.rollout(torch.zeros(1, 2))

    class Other:
        task, obs_dim, action_dim, n_obs_steps = "hopper", 2, 1, 1

        def predict_chunk(self, hist):
            return torch.zeros(len(hist), 4, 1)

    dwm.task = "maze2d-umaze"
    with pytest.raises(ValueError, match="trained on task 'hopper'"):
        dwm.rollout(torch.zeros(1, 2), policy=Other(), horizon=3)
    dwm.task = None


def test_save_load_round_trip_and_corrupt_checkpoints(trained, tmp_path):
    import diffctl as dc

    _, dwm, ens = trained
    s0, acts = torch.zeros(3, 2), torch.rand(3, 6, 1)
    for model in (dwm, ens):
        path = model.save(tmp_path / type(model).__name__)
        again = dc.load(path)
        a = model.rollout(s0, acts, generator=torch.Generator().manual_seed(3))
        b = again.rollout(s0, acts, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(a["observations"], b["observations"])
    config = (tmp_path / "DiffusionWorldModel" / "config.json").read_text()
    (tmp_path / "DiffusionWorldModel" / "config.json").write_text(
        config.replace('"segment": 4', '"segment": 0')
    )
    with pytest.raises(ValueError, match="segment must be >= 1"):
        dc.load(tmp_path / "DiffusionWorldModel")


def test_elites_are_the_members_with_the_lowest_validation_error(trained, tmp_path):
    store, _, ens = trained
    data = WorldModelData(store)
    ens.fit(data)
    with torch.no_grad():  # spoil member 0 so that it cannot be an elite
        ens.network.head.weight[0].add_(5.0)
    elites = ens.after_training(tmp_path, data)
    assert 0 not in elites and len(elites) == 2
    assert MLPEnsembleWorldModel.load(tmp_path / "checkpoint").elite_members == elites


def test_imagined_returns_rank_policies_like_the_true_system(trained):
    """Constant-action policies on the linear system: imagined returns track the true ones and rank them."""
    from diffctl.world_models.ope import imagined_returns, spearman

    _, dwm, ens = trained

    class Constant:
        n_obs_steps, obs_dim, action_dim, goal_dim = 1, 2, 1, 0

        def __init__(self, a):
            self.a = a

        def predict_chunk(self, hist):
            return torch.full((hist.shape[0], 8, 1), self.a)

    rng = np.random.default_rng(2)
    s0 = rng.uniform(-1, 1, (8, 2)).astype(np.float32)
    levels = [-0.9, -0.4, 0.0, 0.5, 0.9]
    true = [np.mean([truth(s, np.full((12, 1), a))[1].sum() for s in s0]) for a in levels]
    for model in (dwm, ens):
        imagined = [imagined_returns(model, Constant(a), s0, 12).mean() for a in levels]
        assert spearman(imagined, true) == pytest.approx(1.0)
        assert np.abs(np.array(imagined) - np.array(true)).max() < 0.25 * np.ptp(true)


def test_spearman_and_ranks_known_values():
    from diffctl.world_models.ope import ranks, spearman

    np.testing.assert_array_equal(ranks([3.0, 1.0, 2.0, 2.0]), [4.0, 1.0, 2.5, 2.5])
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_imagination_agent_executes_the_candidate_with_the_best_imagined_return(trained):
    from diffctl.world_models.planning import ImaginationAgent

    _, dwm, ens = trained

    class Spread:
        """Candidate i holds action levels[i] for the whole chunk."""

        n_obs_steps, n_action_steps, obs_dim, action_dim, goal_dim = 1, 4, 2, 1, 0
        levels = torch.linspace(-1, 1, 6)

        def predict_chunk(self, hist):
            return self.levels[: len(hist), None, None].expand(len(hist), 8, 1).clone()

    s = np.array([0.3, -0.2], np.float32)
    true = [truth(s, np.full((8, 1), float(a)))[1] @ (0.99 ** np.arange(8)) for a in Spread.levels]
    for model in (dwm, ens):
        agent = ImaginationAgent(Spread(), model, candidates=6, seed=0)
        first = agent.act(s)
        assert first.shape == (1,) and float(first[0]) == pytest.approx(
            float(Spread.levels[int(np.argmax(true))])
        )
        assert len(agent.queue) == 3  # the rest of the executed part of the chosen chunk
        np.testing.assert_allclose(agent.last_scores, true, atol=0.25 * np.ptp(true))
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        ImaginationAgent(Spread(), ens, candidates=0)
