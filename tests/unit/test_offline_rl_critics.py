"""Q-learning parts of the offline RL agents: exact math, the transition sampler, and critics that learn
the known Q-values of a tiny hand-made MDP (terminals cut bootstrapping, timeouts do not)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from diffctl.datasets import EpisodeStore
from diffctl.policies.offline_rl import (
    EDP,
    IDQL,
    DiffusionQL,
    TransitionDataset,
    TwinQ,
    expectile_loss,
    polyak_update,
    returns_reward_scale,
    td_target,
)

GAMMA = 0.9


def test_td_target_cuts_bootstrap_only_at_terminals() -> None:
    r = torch.tensor([1.0, 1.0, 0.5])
    done = torch.tensor([True, False, False])
    v = torch.tensor([10.0, 10.0, 2.0])
    assert torch.allclose(td_target(r, done, v, 0.9), torch.tensor([1.0, 10.0, 2.3]))


def test_expectile_loss_weights_sides() -> None:
    diff = torch.tensor([2.0, -2.0])
    assert torch.allclose(expectile_loss(diff, 0.7), torch.tensor([0.7 * 4, 0.3 * 4]))
    with pytest.raises(ValueError, match="expectile"):
        expectile_loss(diff, 1.0)


def test_polyak_update_moves_target_by_tau() -> None:
    online, target = TwinQ(2, 1, 8, 1), TwinQ(2, 1, 8, 1)
    before = [p.clone() for p in target.parameters()]
    polyak_update(target, online, 0.25)
    for b, t, o in zip(before, target.parameters(), online.parameters(), strict=True):
        assert torch.allclose(t, 0.75 * b + 0.25 * o)
    with pytest.raises(ValueError, match="tau"):
        polyak_update(target, online, 0.0)


def test_returns_reward_scale_is_iql_normalization() -> None:
    rewards = np.array([1.0, 1.0, 1.0, 5.0, 5.0], dtype=np.float32)
    assert returns_reward_scale(rewards, [3, 5]) == pytest.approx(1000.0 / 7.0)


def _mdp_store(with_next: bool) -> EpisodeStore:
    """States A, B, C (one-hot). Episode 1: A -(+1, r 0)-> B -(+1, r 1, terminal). Episode 2:
    A -(-1, r 0.5)-> C -(0, r 1)-> C -(0, r 1)-> C cut by a time limit. With the policy of the data,
    Q(B,+1) = 1, Q(C,0) = 1 / (1 - gamma) = 10, Q(A,+1) = 0.9, Q(A,-1) = 0.5 + 9 = 9.5."""
    a, b, c = np.eye(3, dtype=np.float32)
    obs = np.stack([a, b, a, c, c])
    nxt = np.stack([b, b, c, c, c])
    data = {
        "observations": obs,
        "actions": np.array([[1.0], [1.0], [-1.0], [0.0], [0.0]], dtype=np.float32),
        "rewards": np.array([0.0, 1.0, 0.5, 1.0, 1.0], dtype=np.float32),
        "terminals": np.array([False, True, False, False, False]),
        "timeouts": np.array([False, False, False, False, True]),
    }
    if with_next:
        data["next_observations"] = nxt
    return EpisodeStore.from_arrays(data, np.array([2, 5]))


def test_transition_dataset_next_obs_and_dropped_steps() -> None:
    ds = TransitionDataset(_mdp_store(with_next=False))
    assert len(ds) == 4  # the timed-out last step has no next observation; the terminal one is kept
    batch = ds.get_batch(np.arange(4))
    assert batch["obs"].shape == (4, 1, 3) and batch["actions"].shape == (4, 1, 1)
    assert batch["terminals"][:, 0].tolist() == [False, True, False, False]
    assert torch.equal(batch["next_obs"][2, 0], torch.tensor([0.0, 0.0, 1.0]))
    full = TransitionDataset(_mdp_store(with_next=True))
    assert len(full) == 5
    assert torch.equal(full.get_batch([4])["next_obs"][0, 0], torch.tensor([0.0, 0.0, 1.0]))


def test_transition_dataset_without_rewards_is_refused() -> None:
    data = {"observations": np.zeros((4, 2), np.float32), "actions": np.zeros((4, 1), np.float32),
            "terminals": np.zeros(4, bool)}  # fmt: skip
    store = EpisodeStore.from_arrays(data, np.array([4]))
    with pytest.raises(ValueError, match="rewards"):
        TransitionDataset(store)


ORACLE = {(0, 1.0): 0.9, (0, -1.0): 9.5, (1, 1.0): 1.0, (2, 0.0): 10.0}


def _train_critic(agent, ds, steps: int = 1400) -> None:
    params = [p for n, p in agent.network.named_parameters() if not n.startswith("actor") and p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    batch = ds.get_batch(np.arange(len(ds)))
    for _ in range(steps):
        agent.update_targets()
        loss, _ = agent.critic_loss(agent.transitions(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def _q_of(agent, state: int, action: float) -> float:
    s = agent._state(torch.eye(3)[state : state + 1], None)
    a = agent.normalizer("action").normalize(torch.tensor([[action]]))
    return float(agent.network.critic.q_min(s, a))


def _make(cls, ds, **kw):
    torch.manual_seed(0)
    agent = cls(3, 1, hidden=32, depth=2, critic_hidden=64, critic_depth=2, discount=GAMMA, tau=0.05, **kw)
    agent.fit(ds)
    return agent


@pytest.mark.parametrize(
    "cls, kw", [(IDQL, {}), (EDP, {"backup": "expectile"})], ids=["IDQL", "EDP-expectile"]
)
def test_iql_critic_learns_known_q_values(cls, kw, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = TransitionDataset(_mdp_store(with_next=True))
    agent = _make(cls, ds, expectile=0.7, **kw)

    def no_sampling(*args, **kwargs):
        raise AssertionError("IQL's in-sample backup must not sample actions")

    monkeypatch.setattr(agent, "sample_actions", no_sampling)
    _train_critic(agent, ds)
    for (s, a), q in ORACLE.items():
        assert _q_of(agent, s, a) == pytest.approx(q, abs=0.05 * max(1.0, q)), (s, a)
    with torch.no_grad():
        v_a = float(agent.network.value(agent._state(torch.eye(3)[:1], None)))
    assert v_a == pytest.approx(0.7 * 9.5 + 0.3 * 0.9, abs=0.4)  # expectile of {0.9, 9.5}


def test_diffusion_ql_critic_target_with_oracle_next_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = TransitionDataset(_mdp_store(with_next=True))
    agent = _make(DiffusionQL, ds)
    act_of = {1: 1.0, 2: 0.0}

    def oracle(state: torch.Tensor, actor=None, generator=None) -> torch.Tensor:
        idx = state.argmax(dim=-1).tolist()
        raw = torch.tensor([[act_of.get(i, 0.0)] for i in idx])
        return agent.normalizer("action").normalize(raw)

    monkeypatch.setattr(agent, "sample_actions", oracle)
    _train_critic(agent, ds)
    for (s, a), q in ORACLE.items():
        assert _q_of(agent, s, a) == pytest.approx(q, abs=0.05 * max(1.0, q)), (s, a)


def test_idql_advantage_weights_follow_the_learned_critic() -> None:
    ds = TransitionDataset(_mdp_store(with_next=True))
    agent = _make(IDQL, ds, expectile=0.7, awr_beta=0.5)
    _train_critic(agent, ds)
    batch = ds.get_batch(np.arange(len(ds)))
    a_plus, a_minus = (int(i) for i in np.flatnonzero(batch["obs"][:, 0, 0].numpy() == 1.0))
    assert batch["actions"][a_plus, 0, 0] == 1.0 and batch["actions"][a_minus, 0, 0] == -1.0
    tr = agent.transitions(batch)
    log_ratio = torch.log(agent.advantage_weights(tr)[a_minus] / agent.advantage_weights(tr)[a_plus])
    assert float(log_ratio) / 0.5 == pytest.approx(9.5 - 0.9, abs=0.6)  # Q(A,-1) - Q(A,+1); V cancels
    agent.config = agent.config.replace(awr_beta=5.0)
    weights = agent.advantage_weights(tr)
    assert float(weights[a_minus]) == 100.0  # exp(5 * 2.6) clipped at AWR_MAX_WEIGHT
    assert float(weights[a_plus]) < 1e-6


def _share_of_better_action(agent: IDQL, ds: TransitionDataset, awr_beta: float) -> float:
    """Train the actor with ``awr_beta`` against the agent's (already trained) critic and return the share
    of sampled actions in state A that are the high-Q action -1 (the data holds -1 and +1 once each)."""
    agent.config = agent.config.replace(awr_beta=awr_beta)
    opt = torch.optim.Adam(agent.network.actor.parameters(), lr=3e-3)
    tr = agent.transitions(ds.get_batch(np.repeat(np.arange(len(ds)), 64)))
    for _ in range(400):
        loss, _ = agent.actor_loss(tr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    agent.configure_act(n_candidates=1)
    actions = agent.select_actions(torch.eye(3)[:1].repeat(400, 1))
    return float((actions[:, 0] < 0).float().mean())


def test_advantage_weighted_denoising_tilts_the_actor_to_the_better_action() -> None:
    ds = TransitionDataset(_mdp_store(with_next=True))
    agent = _make(IDQL, ds, expectile=0.7)
    _train_critic(agent, ds)
    untrained = copy.deepcopy(agent.network.actor.state_dict())
    assert 0.3 < _share_of_better_action(agent, ds, 0.0) < 0.7  # pure BC: both data actions
    agent.network.actor.load_state_dict(untrained)
    assert _share_of_better_action(agent, ds, 1.0) > 0.9
