"""Policy-guided synthesis: imagined episodes follow the policy through an exact model, stop at predicted
terminals, keep the real episodes first and carry a card."""

import numpy as np
import pytest
import torch

from diffctl.datasets import EpisodeStore
from diffctl.world_models.base import WorldModel
from diffctl.world_models.synthesis import SynthesisSettings, synthesize


class Drift(WorldModel):
    """s' = s + a, reward = s, terminal once s' > 2 (segment of 3 steps, exact)."""

    state_dim = action_dim = 1
    segment = 3

    def predict_segment(self, obs, actions, generator=None):
        s, states, rewards = obs[:, 0], [], []
        for k in range(actions.shape[1]):
            rewards.append(s)
            s = s + actions[:, k, 0]
            states.append(s)
        states = torch.stack(states, 1)
        return {"observations": states[..., None], "rewards": torch.stack(rewards, 1),
                "terminals": (states > 2).float()}  # fmt: skip


class Push:
    """A one-step policy that always pushes by +0.5."""

    n_obs_steps = n_action_steps = 1
    obs_dim = action_dim = 1

    def predict_chunk(self, history):
        return torch.full((len(history), 1, 1), 0.5)


def source() -> EpisodeStore:
    obs = np.linspace(-1, 1, 40, dtype=np.float32)[:, None]
    actions = np.where(np.arange(40) % 2, 1.0, -1.0)[:, None].astype(np.float32)
    data = {"observations": obs, "actions": actions, "rewards": obs[:, 0], "terminals": np.zeros(40, bool)}
    return EpisodeStore.from_arrays(data, np.array([20, 40]), attrs={"dataset": "drift", "task": "drift"})


def test_noise_free_synthesis_follows_the_policy_and_stops_at_terminals() -> None:
    settings = SynthesisSettings(episodes=30, horizon=8, action_noise=0.0, seed=1, batch=7)
    store = synthesize(Drift(), Push(), source(), settings=settings, progress=False)
    assert store.num_episodes == 2 + 30 and store.attrs["real_steps"] == 40
    np.testing.assert_array_equal(store.array("observations")[:40], source().array("observations"))
    obs, act = store.array("observations")[40:, 0], store.array("actions")[40:, 0]
    ends = store.episode_ends[2:] - 40
    assert np.all(act == 0.5)
    for start, end in zip(np.r_[0, ends[:-1]], ends, strict=True):
        states = obs[start:end]
        np.testing.assert_allclose(np.diff(states), 0.5, atol=1e-6)  # s' = s + a along each episode
        np.testing.assert_allclose(store.array("rewards")[40 + start : 40 + end], states, atol=1e-6)
        terminal = store.array("terminals")[40 + end - 1]
        assert terminal == (states[-1] + 0.5 > 2) and store.array("timeouts")[40 + end - 1] != terminal
        assert terminal or end - start == 8
    assert store.attrs["synthetic_steps"] == len(obs) and store.attrs["dataset"] == "drift-synthetic"


def test_noise_stays_in_the_data_action_range_and_seeds_repeat() -> None:
    settings = SynthesisSettings(episodes=50, horizon=4, action_noise=2.0, seed=3, include_real=False)
    first = synthesize(Drift(), Push(), source(), settings=settings, progress=False)
    again = synthesize(Drift(), Push(), source(), settings=settings, progress=False)
    act = first.array("actions")
    assert first.num_episodes == 50 and act.min() >= -1.0 and act.max() <= 1.0 and act.std() > 0.3
    np.testing.assert_array_equal(act, again.array("actions"))


def test_bad_settings_and_mismatched_models_are_named() -> None:
    with pytest.raises(ValueError, match="horizon"):
        synthesize(Drift(), Push(), source(), settings=SynthesisSettings(horizon=0), progress=False)
    wide = Drift()
    wide.state_dim = 3
    with pytest.raises(ValueError, match="3 features"):
        synthesize(wide, Push(), source(), settings=SynthesisSettings(episodes=2), progress=False)


def test_a_termination_rule_ends_episodes_where_the_model_does_not() -> None:
    settings = SynthesisSettings(episodes=20, horizon=8, action_noise=0.0, include_real=False)
    store = synthesize(Drift(), Push(), source(), settings=settings, progress=False,
                       terminal_fn=lambda s: s[..., 0] > 1.0)  # fmt: skip
    nxt = store.array("observations")[:, 0] + store.array("actions")[:, 0]  # s' = s + a
    terminal = store.array("terminals")
    np.testing.assert_array_equal(terminal, nxt > 1.0)  # every step past 1 ends its episode, none before
    assert store.attrs["termination_rule"] is True and terminal[store.episode_ends - 1].all()
