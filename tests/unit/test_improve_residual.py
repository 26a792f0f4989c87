"""Residual PPO: GAE and the clipped surrogate on known numbers, a residual that starts at its base policy,
exact resume, and a fine-tuning run that improves a poor base on a toy task."""

import math

import numpy as np
import pytest
import torch
from helpers import LINE_STEPS as STEPS
from helpers import Line, base_policy

import diffctl as dc
from diffctl.improve.ppo import clipped_surrogate, gae, gaussian_log_prob
from diffctl.improve.residual import ResidualPolicy, ResidualPPOConfig, finetune_residual


def test_gae_on_a_two_state_chain_with_known_values():
    """A -> B -> end with rewards 1 then 2, gamma 0.9: V(B) = 2, V(A) = 1 + 0.9 * 2 = 2.8."""
    rewards = torch.tensor([[1.0], [2.0]])
    terminal = torch.tensor([[False], [True]])
    alive = torch.ones(2, 1, dtype=torch.bool)
    exact = torch.tensor([[2.8], [2.0]])
    next_exact = torch.tensor([[2.0], [123.0]])  # the terminal step's next value is never read
    adv, ret = gae(rewards, exact, next_exact, terminal, alive, 0.9, 0.7)
    torch.testing.assert_close(adv, torch.zeros(2, 1))
    torch.testing.assert_close(ret, exact)
    zero = torch.zeros(2, 1)
    adv, _ = gae(rewards, zero, zero, terminal, alive, 0.9, 1.0)  # lambda 1: Monte Carlo returns
    torch.testing.assert_close(adv, exact)
    adv, _ = gae(rewards, zero, zero, terminal, alive, 0.9, 0.0)  # lambda 0: one-step TD errors
    torch.testing.assert_close(adv, rewards)
    # cut by a time limit after A (not terminal): bootstrap V(B) = 2, and B's step is not part of the episode
    no_end, first_only = torch.zeros(2, 1, dtype=torch.bool), torch.tensor([[True], [False]])
    cut = gae(rewards, exact, next_exact, no_end, first_only, 0.9, 0.7)[0]
    torch.testing.assert_close(cut, torch.tensor([[0.0], [0.0]]))


def test_clipped_surrogate_stops_pushing_past_the_clip():
    old = torch.zeros(4)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    new = torch.log(torch.tensor([1.5, 0.9, 0.5, 1.1])).requires_grad_(True)
    loss, frac, kl = clipped_surrogate(new, old, adv, 0.2)
    # min(rho A, clip(rho) A): 1.2, 0.9, -0.8, -1.1
    assert float(loss.detach()) == pytest.approx(-(1.2 + 0.9 - 0.8 - 1.1) / 4)
    assert float(frac) == pytest.approx(0.5)
    loss.backward()
    grads = new.grad.tolist()
    assert grads[0] == 0.0 and grads[2] == 0.0  # clipped: no gradient
    assert grads[1] == pytest.approx(-0.9 / 4) and grads[3] == pytest.approx(1.1 / 4)
    ratio = torch.tensor([1.5, 0.9, 0.5, 1.1])
    assert float(kl) == pytest.approx(float(((ratio - 1) - ratio.log()).mean()))


def test_gaussian_log_prob_matches_torch():
    x, mean, log_std = torch.randn(5, 3), torch.randn(5, 3), torch.randn(3)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(x).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, log_std.expand_as(mean)), expected)


def config(tmp_path, **kw):
    settings = {"base": str(tmp_path / "base"), "num_envs": 8, "env_steps": 8 * STEPS * 2, "hidden": 32,
                "eval_episodes": 0, "checkpoint_every": 1, "residual_scale": 0.5, "lr": 3e-3}  # fmt: skip
    return ResidualPPOConfig.from_dict({**settings, **kw})


def run(cfg, run_dir, resume=False):
    return finetune_residual(
        cfg, "line", run_dir, resume=resume, progress=False, env_fn=Line, episode_steps=STEPS
    )


def test_residual_starts_at_the_base_policy_and_round_trips(tmp_path):
    base = base_policy(tmp_path)
    agent = ResidualPolicy(dc.load(tmp_path / "base"), config(tmp_path))
    obs = np.array([0.3, 1.0], np.float32)
    agent.reset(seed=3)
    base.reset(seed=3)
    np.testing.assert_allclose(agent.act(obs), base.act(obs), atol=1e-6)
    agent.save(tmp_path / "agent")
    again = dc.load(tmp_path / "agent")
    assert isinstance(again, ResidualPolicy) and again.config == agent.config
    for a, b in zip(again.network.parameters(), agent.network.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_resume_is_exact(tmp_path):
    base_policy(tmp_path)
    straight = run(config(tmp_path), tmp_path / "straight")
    run(config(tmp_path, env_steps=8 * STEPS), tmp_path / "split")
    resumed = run(config(tmp_path), tmp_path / "split", resume=True)
    assert straight["env_steps"] == resumed["env_steps"] == 2 * 8 * STEPS
    a = dc.load(tmp_path / "straight" / "checkpoint").network.state_dict()
    b = dc.load(tmp_path / "split" / "checkpoint").network.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_residual_ppo_improves_a_poor_base(tmp_path):
    """The untrained base moves at random; 40 iterations of residual PPO learn to walk to the goal."""
    base_policy(tmp_path)
    cfg = config(tmp_path, env_steps=40 * 8 * STEPS, residual_scale=1.0, init_log_std=-0.5)
    run(cfg, tmp_path / "run")
    records = [r for r in dc_metrics(tmp_path / "run")]
    first = np.mean([r["train/mean_return"] for r in records[:5]])
    last = np.mean([r["train/mean_return"] for r in records[-5:]])
    assert last > first + 1.0, (first, last)
    assert math.isfinite(records[-1]["policy_loss"])


def dc_metrics(run_dir):
    from diffctl.train.metrics import read_metrics

    return read_metrics(run_dir)
