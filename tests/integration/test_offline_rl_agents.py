"""DiffusionQL, IDQL and EDP end to end: the Trainer overfits a tiny bandit, save/load (dc.load with act and
sampler overrides), pickling for evaluate's workers, and clear errors on bad inputs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import diffctl as dc
from diffctl.datasets import EpisodeStore
from diffctl.policies.offline_rl import EDP, IDQL, DiffusionQL, TransitionDataset
from diffctl.policies.offline_rl.edp import DISTILL_NOISE_SCALE
from diffctl.train import TrainConfig, Trainer

AGENTS = (IDQL, DiffusionQL, EDP)
SMALL = {"hidden": 64, "depth": 2, "critic_hidden": 64, "critic_depth": 2, "n_candidates": 64, "tau": 0.05,
         "selection": "argmax"}  # fmt: skip


def _train(cls, ds, tmp_path, steps: int = 300, **kw):
    agent = cls(1, 1, **SMALL, **kw)
    agent.fit(ds)
    cfg = TrainConfig(steps=steps, batch_size=128, lr=1e-3, warmup_steps=0, ema=False, progress=False,
                      tensorboard=False, checkpoint_every=0, log_every=50, device="cpu")  # fmt: skip
    summary = Trainer(agent, ds, cfg, tmp_path / cls.__name__).fit()
    return agent, summary


@pytest.mark.parametrize("cls", AGENTS, ids=lambda c: c.__name__)
def test_agent_overfits_bandit_and_round_trips(cls, tmp_path, bandit) -> None:
    ds = TransitionDataset(bandit())
    steps = 600 if cls is IDQL else 300  # IDQL's pure-BC actor needs longer to cover the action range
    agent, summary = _train(cls, ds, tmp_path, steps)
    assert summary["step"] == steps and np.isfinite(summary["loss"])
    agent.reset(seed=0)
    for s in (-1.0, 1.0):
        actions = [float(agent.act(np.array([s], np.float32))[0]) for _ in range(4)]
        assert np.abs(np.array(actions) - 0.6 * s).max() < 0.25, (s, actions)

    net = agent.network
    assert not any(p.requires_grad for p in net.critic_target.parameters())
    assert not torch.equal(net.critic_target.q1[0].weight, net.critic.q1[0].weight)  # Polyak, not a copy

    loaded = dc.load(tmp_path / cls.__name__ / "checkpoint")
    assert type(loaded) is cls
    obs = torch.tensor([[1.0], [-1.0]])
    noise = torch.randn(2, SMALL["n_candidates"], 1, generator=torch.Generator().manual_seed(1))
    agent.seed(3)
    loaded.seed(3)
    assert torch.allclose(
        agent.predict_chunk(obs[:, None], noise=noise), loaded.predict_chunk(obs[:, None], noise=noise)
    )

    tuned = dc.load(tmp_path / cls.__name__ / "checkpoint", n_candidates=4, selection="softmax", steps=3)
    assert tuned.act_settings["n_candidates"] == 4 and tuned.sampler.steps == 3
    assert tuned.act(np.array([1.0], np.float32)).shape == (1,)

    clone = pickle.loads(pickle.dumps(agent))
    agent.seed(5)
    clone.seed(5)
    assert np.array_equal(agent.act(np.array([1.0], np.float32)), clone.act(np.array([1.0], np.float32)))


def test_goal_conditioned_agent_takes_state_then_goal() -> None:
    rng = np.random.default_rng(0)
    data = {"observations": rng.normal(size=(20, 2)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (20, 2)).astype(np.float32), "rewards": np.zeros(20, np.float32),
            "terminals": np.zeros(20, bool),
            "infos/goal": rng.normal(size=(20, 2)).astype(np.float32)}  # fmt: skip
    ds = TransitionDataset(EpisodeStore.from_arrays(data, np.array([10, 20])), goal="task")
    agent = IDQL(2, 2, goal_dim=2, **SMALL)
    agent.fit(ds)
    loss, info = agent.loss(ds.get_batch(np.arange(8)))
    assert torch.isfinite(loss) and "value_loss" in info
    assert agent.act(np.zeros(4, np.float32)).shape == (2,)
    with pytest.raises(ValueError, match=r"shape \(2,\); expected one of \[\(4,\)\]"):
        agent.act(np.zeros(2, np.float32))


def test_bad_inputs_give_clear_errors(bandit) -> None:
    ds = TransitionDataset(bandit(16))
    agent = DiffusionQL(1, 1, **SMALL)
    agent.fit(ds)
    batch = ds.get_batch(np.arange(4))
    with pytest.raises(ValueError, match="rewards"):
        agent.loss({k: v for k, v in batch.items() if k != "rewards"})
    with pytest.raises(ValueError, match="next_obs"):
        agent.loss({k: v for k, v in batch.items() if k != "next_obs"})
    wide = dict(batch, actions=torch.zeros(4, 1, 3))
    with pytest.raises(ValueError, match="actions"):
        agent.loss(wide)
    with pytest.raises(ValueError, match="action_dim=2"):
        IDQL(1, 2, **SMALL).fit(ds)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        DiffusionQL(1, 1, sampler={"steps": 10})
    with pytest.raises(ValueError, match="schedule"):
        EDP(1, 1, sampler={"schedule": "karras"})
    with pytest.raises(ValueError, match="n_candidates"):
        IDQL(1, 1, n_candidates=0)
    with pytest.raises(ValueError, match="unknown IDQL keys"):
        IDQL(1, 1, eta=1.0)
    for bad in (-1.0, float("nan"), "3", True):
        with pytest.raises(ValueError, match="awr_beta"):
            IDQL(1, 1, awr_beta=bad)
    with pytest.raises(ValueError, match="NaN"):
        agent.act(np.array([np.nan], np.float32))


@pytest.mark.parametrize("distill", [0, 4], ids=["plain", "distilled"])
def test_edp_with_expectile_backup_overfits_bandit_and_round_trips(tmp_path, bandit, distill) -> None:
    assert EDP.config_class.backup == "expectile"
    etas = (EDP.config_class.eta, DiffusionQL(1, 1, **SMALL).hparams["eta"])
    assert etas == (10, 1), "EDP's Q term defaults to 10 times the paper's (and DiffusionQL's) weight"
    ds = TransitionDataset(bandit())
    agent, summary = _train(EDP, ds, tmp_path, expectile=0.8, distill_candidates=distill)
    assert summary["step"] == 300 and np.isfinite(summary["loss"])
    assert agent.network.value is not None and agent.network.actor_target is None
    agent.reset(seed=0)
    for s in (-1.0, 1.0):
        actions = [float(agent.act(np.array([s], np.float32))[0]) for _ in range(4)]
        assert np.abs(np.array(actions) - 0.6 * s).max() < 0.25, (s, actions)

    loaded = dc.load(tmp_path / "EDP" / "checkpoint")
    hp = loaded.hparams
    assert (hp["backup"], hp["expectile"], hp["eta"]) == ("expectile", 0.8, 10)
    assert loaded.hparams["distill_candidates"] == distill
    state = torch.tensor([[1.0], [-1.0]])
    assert torch.equal(loaded.network.value(state), agent.network.value(state))


@pytest.mark.parametrize(
    "kw, message",
    [({"backup": "td3"}, "backup must be one of"), ({"backup": "expectile", "expectile": 1.0}, "expectile"),
     ({"distill_candidates": -1}, "distill_candidates must be an integer >= 0, got -1"),
     ({"distill_candidates": 2.5}, "distill_candidates"), ({"distill_states": True}, "distill_states"),
     ({"distill_states": 0}, "distill_states must be an integer >= 1"),
     ({"distill_weight": float("nan")}, "distill_weight must be a finite number")],
)  # fmt: skip
def test_bad_edp_settings_are_named(kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        EDP(1, 1, **kw)


def test_edp_distillation_targets_the_critics_best_candidate(bandit) -> None:
    agent = EDP(1, 1, **SMALL, distill_candidates=6, distill_states=3)
    ds = TransitionDataset(bandit(32))
    agent.fit(ds)
    agent.network.critic_target.q_min = lambda s, a: -(a - 0.3).pow(2).sum(-1)  # known Q: best action 0.3
    state = torch.tensor([[1.0], [-1.0]])
    torch.manual_seed(5)
    best = agent.best_of_samples(state)
    torch.manual_seed(5)
    cand, _ = agent.scored_candidates(state, DISTILL_NOISE_SCALE * torch.randn(2, 6, 1), solver="ddim")
    closest = cand[torch.arange(2), (cand - 0.3).abs().squeeze(-1).argmin(dim=-1)]
    assert torch.equal(best, closest)
    assert cand.std(dim=1).min() > 0  # the six candidates differ, so the pick is a real choice

    tr = agent.transitions(ds.get_batch(np.arange(8)))
    loss, info = agent.actor_loss(tr)
    loss.backward()
    assert info["distill_loss"] > 0
    assert all(p.grad is None for p in agent.network.critic.parameters())
    assert any(p.grad is not None for p in agent.actor.parameters())


@pytest.mark.parametrize(
    "cls, kw",
    [(c, {}) for c in AGENTS] + [(EDP, {"backup": "policy"})],
    ids=lambda x: getattr(x, "__name__", str(x)),
)
def test_grad_groups_cover_every_trainable_parameter_once(cls, kw) -> None:
    agent = cls(3, 2, **SMALL, **kw)
    grouped = [p for params in agent.grad_groups().values() for p in params]
    trainable = [p for p in agent.network.parameters() if p.requires_grad]
    assert len(grouped) == len({id(p) for p in grouped}) == len(trainable)
    assert {id(p) for p in grouped} == {id(p) for p in trainable}


def test_load_rejects_unknown_overrides_naming_both_kinds(tmp_path, bandit) -> None:
    agent = IDQL(1, 1, **SMALL)
    agent.fit(TransitionDataset(bandit(n=16)))
    agent.save(tmp_path / "agent")
    with pytest.raises(ValueError, match=r"load overrides \['n_candidate'\].*n_candidates.*steps"):
        dc.load(tmp_path / "agent", n_candidate=4)


def test_noise_scale_scales_the_start_noise_and_zero_is_deterministic(bandit) -> None:
    ds = TransitionDataset(bandit(n=64))
    obs = torch.tensor([[1.0]])
    scaled = IDQL(1, 1, **{**SMALL, "n_candidates": 4}, noise_scale=0.5, sampler={"solver": "ddim"})
    scaled.fit(ds)
    plain = IDQL(1, 1, **{**SMALL, "n_candidates": 4}, sampler={"solver": "ddim"})
    plain.fit(ds)
    plain.network.load_state_dict(scaled.network.state_dict())
    scaled.seed(3)
    noise = 0.5 * torch.randn(1, 4, 1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(scaled.select_actions(obs), plain.select_actions(obs, noise))

    scaled.configure_act(noise_scale=0.0)
    actions = set()
    for seed in range(3):
        scaled.seed(seed)
        actions.add(float(scaled.select_actions(obs)[0, 0]))
    assert len(actions) == 1
    with pytest.raises(ValueError, match="noise_scale"):
        IDQL(1, 1, noise_scale=-1.0)


def test_raw_critic_inputs_read_unnormalized_states_after_fit_and_load(tmp_path) -> None:
    rng = np.random.default_rng(0)
    data = {"observations": rng.normal(5.0, 3.0, size=(40, 2)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (40, 2)).astype(np.float32), "rewards": np.zeros(40, np.float32),
            "terminals": np.zeros(40, bool),
            "infos/goal": rng.normal(-2.0, 0.5, size=(40, 2)).astype(np.float32)}  # fmt: skip
    ds = TransitionDataset(EpisodeStore.from_arrays(data, np.array([20, 40])), goal="task")
    obs, goal = torch.from_numpy(data["observations"][:5]), torch.from_numpy(data["infos/goal"][:5])
    raw = torch.cat([obs, goal], dim=-1)
    agent = IDQL(2, 2, goal_dim=2, **SMALL)
    assert agent.hparams["critic_activation"] == "relu" and agent.hparams["critic_inputs"] == "raw"
    assert isinstance(agent.network.critic.q1[1], torch.nn.ReLU)
    agent.fit(ds)
    state = agent._state(obs, goal)
    assert not torch.allclose(state, raw, atol=0.1)
    net = agent.network
    for module in (net.critic, net.critic_target, net.value):
        assert torch.allclose(module.state_input(state), raw, atol=1e-4)
    loaded = dc.load(agent.save(tmp_path / "idql"))
    assert torch.allclose(loaded.network.value.state_input(state), raw, atol=1e-4)
    action = state[:, :2]
    assert torch.allclose(loaded.network.critic.q_min(state, action), net.critic.q_min(state, action))

    dql = DiffusionQL(2, 2, goal_dim=2, **SMALL)
    dql.fit(ds)
    assert isinstance(dql.network.critic.q1[1], torch.nn.Mish)
    assert torch.equal(dql.network.critic.state_input(state), state)

    edp = EDP(2, 2, goal_dim=2, eta=0.5, **SMALL)
    edp.fit(ds)
    hp = edp.hparams
    assert (hp["critic_activation"], hp["critic_inputs"], hp["eta"]) == ("relu", "raw", 0.5)
    assert isinstance(edp.network.critic.q1[1], torch.nn.ReLU)
    assert torch.allclose(edp.network.critic_target.state_input(state), raw, atol=1e-4)
    assert "eta" in EDP.config_class.field_names()


def _saved_without(agent, path, keys: tuple[str, ...]):
    """``agent`` saved as a version that predates the hyperparameters ``keys`` would have saved it."""
    import json

    path = agent.save(path)
    config = json.loads((path / "config.json").read_text())
    for key in keys:
        del config["hyperparameters"][key]
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_agents_saved_before_the_critic_keys_load_with_their_mish_critics(tmp_path, bandit) -> None:
    agent = IDQL(1, 1, critic_activation="mish", critic_inputs="normalized", **SMALL)
    agent.fit(TransitionDataset(bandit(32)))
    loaded = dc.load(_saved_without(agent, tmp_path / "old", ("critic_activation", "critic_inputs")))
    assert loaded.hparams["critic_activation"] == "mish" and loaded.hparams["critic_inputs"] == "normalized"
    s, a = torch.tensor([[1.0], [-1.0]]), torch.tensor([[0.5], [-0.2]])
    assert torch.equal(loaded.network.critic.q_min(s, a), agent.network.critic.q_min(s, a))


def test_edp_saved_before_the_backup_key_loads_with_the_policy_backup(tmp_path, bandit) -> None:
    agent = EDP(1, 1, backup="policy", **SMALL)
    agent.fit(TransitionDataset(bandit(32)))
    distill = ("distill_candidates", "distill_states", "distill_weight")
    loaded = dc.load(_saved_without(agent, tmp_path / "old", ("backup", "expectile", *distill)))
    assert loaded.hparams["backup"] == "policy" and loaded.hparams["distill_candidates"] == 0
    assert loaded.network.actor_target is not None and loaded.network.value is None
    saved = agent.network.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.network.state_dict().items())


@pytest.mark.parametrize("key, value", [("critic_activation", "tanh"), ("critic_inputs", "zscore")])
def test_bad_critic_settings_are_named(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{key} must be one of"):
        IDQL(1, 1, **{key: value})
