"""TD3+BC: the Trainer overfits a bandit, save/load round trip, the delayed actor update, value expansion
through an attached world model against a hand computation, and clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import diffctl as dc
from diffctl.policies.offline_rl import TD3BC, TransitionDataset
from diffctl.train import TrainConfig, Trainer
from diffctl.world_models.base import WorldModel

SMALL = {"hidden": 64, "critic_hidden": 64, "tau": 0.05, "alpha": 20.0}


def test_td3bc_overfits_bandit_and_round_trips(tmp_path, bandit) -> None:
    ds = TransitionDataset(bandit())
    agent = TD3BC(1, 1, **SMALL)
    agent.fit(ds)
    cfg = TrainConfig(steps=600, batch_size=128, lr=1e-3, warmup_steps=0, ema=False, progress=False,
                      tensorboard=False, checkpoint_every=0, log_every=100, device="cpu")  # fmt: skip
    Trainer(agent, ds, cfg, tmp_path / "run").fit()
    for s in (-1.0, 1.0):
        assert abs(float(agent.act(np.array([s], np.float32))[0]) - 0.6 * s) < 0.2
    assert int(agent.network.updates) == 600
    loaded = dc.load(tmp_path / "run" / "checkpoint")
    assert type(loaded) is TD3BC and int(loaded.network.updates) == 600
    obs = torch.tensor([[1.0], [-1.0], [0.3]])
    torch.testing.assert_close(loaded.select_actions(obs), agent.select_actions(obs))
    copy = pickle.loads(pickle.dumps(agent))  # evaluate's workers
    torch.testing.assert_close(copy.select_actions(obs), agent.select_actions(obs))


def test_actor_and_targets_move_every_policy_delay_steps(bandit) -> None:
    ds = TransitionDataset(bandit(64))
    agent = TD3BC(1, 1, **SMALL, policy_delay=2)
    agent.fit(ds)
    agent.network.train()
    batch = ds.get_batch(np.arange(32))
    with torch.no_grad():
        for p in agent.network.critic.parameters():  # online and target critics differ, as after training
            p.add_(0.1)
    for step in range(4):
        agent.network.zero_grad(set_to_none=True)
        before = agent.network.critic_target.q1[0].weight.clone()
        loss, info = agent.loss(batch)
        loss.backward()
        actor_grad = agent.network.actor[0][0].weight.grad
        moved = not torch.equal(before, agent.network.critic_target.q1[0].weight)
        assert (actor_grad is not None) == (step % 2 == 0) == moved == ("actor_bc" in info)


class ShiftModel(WorldModel):
    """s' = s + a, reward = s, never terminal (raw units)."""

    state_dim = action_dim = 1
    segment = 1

    def predict_segment(self, obs, actions, generator=None):
        nxt = obs + actions[:, 0]
        return {"observations": nxt[:, None], "rewards": obs[:, :1].T.reshape(-1, 1),
                "terminals": torch.zeros(len(obs), 1)}  # fmt: skip


def test_expanded_value_is_the_imagined_return_plus_the_bootstrap(bandit) -> None:
    agent = TD3BC(1, 1, **SMALL, policy_noise=0.0, discount=0.9, reward_scale=2.0, reward_bias=0.5,
                  world_model="unused", expansion_horizon=1)  # fmt: skip
    agent.fit(TransitionDataset(bandit(64)))
    agent.normalizers["obs"] = type(agent.normalizers["obs"]).from_dict(
        {**agent.normalizers["obs"].to_dict(), "scale": [0.5], "offset": [0.25]}
    )
    agent.attach_world_model(ShiftModel())
    state = torch.tensor([[0.4], [-1.2]])
    raw = agent.raw_state(state)
    action = agent.normalizer("action").unnormalize(agent.network.actor_target(state))
    nxt = agent.normalized_state(raw + action)
    want = (2.0 * raw[:, 0] + 0.5) + 0.9 * agent.network.critic_target.q_min(
        nxt, agent.network.actor_target(nxt)
    )
    torch.testing.assert_close(agent.expanded_value(state), want)


class GoalSegmentModel(WorldModel):
    """State (position, goal): the position moves by the action, reward = -|position - goal|; 4-step
    segments, so the actor is asked for whole flattened segments of imagined states."""

    state_dim, action_dim, segment = 2, 1, 4

    def predict_segment(self, obs, actions, generator=None):
        pos, goal, states, rewards = obs[:, 0], obs[:, 1], [], []
        for k in range(actions.shape[1]):
            rewards.append(-(pos - goal).abs())
            pos = pos + actions[:, k, 0]
            states.append(torch.stack([pos, goal], -1))
        return {"observations": torch.stack(states, 1), "rewards": torch.stack(rewards, 1),
                "terminals": torch.zeros(len(obs), actions.shape[1])}  # fmt: skip


def test_goal_conditioned_expansion_keeps_each_row_with_its_own_goal() -> None:
    agent = TD3BC(1, 1, goal_dim=1, **SMALL, policy_noise=0.0, world_model="unused", expansion_horizon=3)
    rng = np.random.default_rng(0)
    agent.fit_normalizers(rng.normal(size=(64, 1)), rng.uniform(-1, 1, (64, 1)), rng.normal(size=(64, 1)))
    agent.attach_world_model(GoalSegmentModel())
    state = torch.tensor([[0.1, -2.0], [0.5, 3.0], [-1.0, 0.7]])
    together = agent.expanded_value(state)
    alone = torch.cat([agent.expanded_value(row[None]) for row in state])
    torch.testing.assert_close(together, alone)


def test_state_value_undoes_the_reward_scale(bandit) -> None:
    agent = TD3BC(1, 1, **SMALL, reward_scale=4.0, reward_bias=1.0, discount=0.5)
    agent.fit(TransitionDataset(bandit(64)))
    obs = torch.tensor([[1.0], [-1.0]])
    state = agent.normalized_state(obs)
    q = agent.network.critic_target.q_min(state, agent.network.actor(state))
    torch.testing.assert_close(agent.state_value(obs) * 4.0 + 1.0 / (1 - 0.5), q)


def test_bad_td3bc_settings_and_world_models_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match="world_model"):
        TD3BC(1, 1, expansion_horizon=3)
    with pytest.raises(ValueError, match="policy_delay"):
        TD3BC(1, 1, policy_delay=0)
    agent = TD3BC(2, 1, world_model=str(tmp_path / "missing"), expansion_horizon=2)
    with pytest.raises(ValueError, match="no checkpoint directory"):
        agent.world_model()
    with pytest.raises(ValueError, match="imagines states of 1"):
        agent.attach_world_model(ShiftModel())
    with pytest.raises(ValueError, match="not a world model"):
        agent.attach_world_model(object())
    with pytest.raises(ValueError, match="noise"):
        agent.select_actions(torch.zeros(1, 2), noise=torch.zeros(1, 1, 1))
