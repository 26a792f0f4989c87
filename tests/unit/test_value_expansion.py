"""Value expansion: the expanded return against closed forms, and imagined policy rollouts through one-step
and segment models against the exact closed loop of a known linear system."""

import pytest
import torch

from diffctl.world_models.base import WorldModel
from diffctl.world_models.expansion import continuation, expanded_return, policy_rollout

A, B = 0.9, 0.5  # s' = A s + B a, r = s, terminal when s' > 1


class LinearModel(WorldModel):
    """Exact model of the scalar system above, predicting ``segment`` steps per call (causal)."""

    state_dim = action_dim = 1

    def __init__(self, segment: int) -> None:
        self.segment = segment
        self.calls = 0

    def predict_segment(self, obs, actions, generator=None):
        self.calls += 1
        self.seen = actions
        s, states, rewards = obs[:, 0], [], []
        for k in range(actions.shape[1]):
            rewards.append(s)
            s = A * s + B * actions[:, k, 0]
            states.append(s)
        states = torch.stack(states, 1)
        return {"observations": states[..., None], "rewards": torch.stack(rewards, 1),
                "terminals": (states > 1).float()}  # fmt: skip


def actor(s: torch.Tensor) -> torch.Tensor:
    return -0.4 * s + 0.1


def closed_loop(s: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    states, rewards = [], []
    s = s[:, 0]
    for _ in range(horizon):
        rewards.append(s)
        s = A * s + B * actor(s[:, None])[:, 0]
        states.append(s)
    return torch.stack(states, 1), torch.stack(rewards, 1)


def test_expanded_return_matches_the_closed_form() -> None:
    gamma, r, v, h = 0.9, 2.0, 5.0, 4
    rewards = torch.full((3, h), r)
    got = expanded_return(rewards, torch.zeros(3, h), torch.full((3,), v), gamma)
    want = r * (1 - gamma**h) / (1 - gamma) + gamma**h * v
    torch.testing.assert_close(got, torch.full((3,), want))


def test_a_certain_terminal_cuts_later_rewards_and_the_bootstrap() -> None:
    rewards = torch.tensor([[1.0, 2.0, 4.0]])
    terminals = torch.tensor([[0.0, 1.0, 0.0]])
    got = expanded_return(rewards, terminals, torch.tensor([100.0]), 0.5)
    torch.testing.assert_close(got, torch.tensor([1.0 + 0.5 * 2.0]))
    half = continuation(torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(half, torch.tensor([[1.0, 0.5, 0.25]]))
    with pytest.raises(ValueError, match="final_value"):
        expanded_return(rewards, terminals, torch.zeros(2), 0.5)


def test_one_step_model_imagines_the_exact_closed_loop() -> None:
    s = torch.tensor([[0.3], [-1.0], [2.0]])
    out = policy_rollout(LinearModel(1), s, actor, horizon=6)
    states, rewards = closed_loop(s, 6)
    torch.testing.assert_close(out["observations"][..., 0], states)
    torch.testing.assert_close(out["rewards"], rewards)


@pytest.mark.parametrize("segment", [4, 8])
def test_segment_model_refinements_reach_the_closed_loop(segment: int) -> None:
    s, horizon = torch.tensor([[0.3], [-1.0]]), 5
    states, _ = closed_loop(s, horizon)
    model = LinearModel(segment)
    exact = policy_rollout(model, s, actor, horizon, refinements=horizon - 1)
    torch.testing.assert_close(exact["observations"][..., 0], states)
    one = policy_rollout(model, s, actor, horizon, refinements=1)  # the first two actions are the policy's
    torch.testing.assert_close(one["observations"][:, :2, 0], states[:, :2])
    assert not torch.allclose(one["observations"][:, -1, 0], states[:, -1])
    none = policy_rollout(model, s, actor, horizon, refinements=0)  # the action at s, repeated
    first = min(segment, horizon)
    torch.testing.assert_close(none["actions"][:, :first, 0], actor(s).expand(-1, first))
    calls = model.calls
    policy_rollout(model, s, actor, horizon=12, refinements=horizon - 1)
    assert model.calls - calls == sum(min(horizon - 1, n - 1) + 1 for n in segments(12, segment))


def segments(horizon: int, segment: int) -> list[int]:
    return [min(segment, horizon - k) for k in range(0, horizon, segment)]


def test_policy_rollout_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="horizon"):
        policy_rollout(LinearModel(1), torch.zeros(1, 1), actor, horizon=0)
    with pytest.raises(ValueError, match="refinements"):
        policy_rollout(LinearModel(4), torch.zeros(1, 1), actor, horizon=2, refinements=-1)


def test_imagined_returns_stop_where_a_termination_rule_says() -> None:
    from diffctl.world_models.ope import imagined_returns

    class Hold:
        n_obs_steps = n_action_steps = 1

        def predict_chunk(self, history):
            return torch.full((len(history), 1, 1), 1.0)

    s = torch.tensor([[0.0], [-3.0]])  # rewards are the states 0, 0.5, 0.95, ... (s' = 0.9 s + 0.5)
    free = imagined_returns(LinearModel(1), Hold(), s, horizon=6, stop_at_terminal=False)
    states, rewards = closed_loop_with(lambda x: torch.ones_like(x), s, 6)
    torch.testing.assert_close(torch.as_tensor(free), rewards.sum(1).double())
    rule = imagined_returns(LinearModel(1), Hold(), s, horizon=6, terminal_fn=lambda x: x[..., 0] > 0.9)
    alive = torch.cat([torch.ones(2, 1, dtype=torch.bool), ~(states[:, :-1] > 0.9)], 1).cumprod(1).bool()
    torch.testing.assert_close(torch.as_tensor(rule), (rewards * alive).sum(1).double())
    assert rule[0] < free[0] and rule[1] == free[1]  # the second start never passes 0.9 in 6 steps


def closed_loop_with(policy, s: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    states, rewards = [], []
    s = s[:, 0]
    for _ in range(horizon):
        rewards.append(s)
        s = A * s + B * policy(s)
        states.append(s)
    return torch.stack(states, 1), torch.stack(rewards, 1)


class OneStep:
    """``actor`` as a chunk policy that is asked at every step."""

    n_obs_steps = n_action_steps = 1

    def predict_chunk(self, history):
        return actor(history[:, -1])[:, None]


@pytest.mark.parametrize("segment", [1, 3, 4])
def test_closed_loop_of_a_one_step_policy_is_exact_on_a_segment_model(segment: int) -> None:
    s, horizon = torch.tensor([[0.3], [-1.0], [2.5]]), 7
    model = LinearModel(segment)
    out = model.rollout(s, policy=OneStep(), horizon=horizon, generator=torch.Generator().manual_seed(0))
    states, rewards = closed_loop(s, horizon)
    torch.testing.assert_close(out["observations"][..., 0], states)
    torch.testing.assert_close(out["rewards"], rewards)
    assert model.calls == horizon  # one imagination per chunk asked, as stepping the model would cost
    last = out["actions"][:, (horizon - 1) // segment * segment :]  # the final segment's executed actions
    torch.testing.assert_close(model.seen[:, : last.shape[1]], last)  # conditioned on them, not on padding
