"""Steering: best-of-N picks the exact argmax, FK particles hit the tilted Gaussian-mixture weights, and a
steered policy's chunks are the best of what its policy samples."""

import math

import numpy as np
import pytest
import torch

from diffctl.improve import FunctionVerifier, QVerifier, SteeredPolicy, WorldModelVerifier
from diffctl.kernels import sample, schedules, steering
from diffctl.kernels.analytic import GaussianMixture
from diffctl.policies import DiffusionPolicy
from diffctl.world_models.base import WorldModel

OBS, ACT, H, TO, TA = 3, 2, 8, 2, 4


def test_best_of_n_returns_the_argmax_of_each_group():
    scores = torch.tensor([0.1, 0.7, 0.3, 5.0, -1.0, 2.0])
    assert steering.best_of_n(scores, 3).tolist() == [1, 3]
    with pytest.raises(ValueError, match="whole number of groups"):
        steering.best_of_n(scores, 4)


def test_systematic_resampling_keeps_certain_and_uniform_weights():
    g = torch.Generator().manual_seed(0)
    one_hot = torch.tensor([[-math.inf, 0.0, -math.inf, -math.inf]])
    assert steering.systematic_resample(one_hot, g).tolist() == [[1, 1, 1, 1]]
    assert steering.systematic_resample(torch.zeros(1, 4), g).tolist() == [[0, 1, 2, 3]]
    heavy = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))
    assert sorted(steering.systematic_resample(heavy, g)[0].tolist())[:2] == [0, 0]


def test_one_particle_is_ddpm_sampling():
    """With K = 1 there is nothing to resample: the same draws as the DDPM solver."""
    gm = GaussianMixture([[-1.0, 0.5], [1.0, -0.5]], 0.3)
    sigmas = schedules.karras(12, 0.01, 20.0, 7.0).double()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigmas[0]
    plain = sample(gm.denoise, x, sigmas, solver="ddpm", generator=torch.Generator().manual_seed(2))
    res = steering.fk_steer(gm.denoise, x, sigmas, lambda x0: x0[:, 0], particles=1, lam=3.0,
                            generator=torch.Generator().manual_seed(2))  # fmt: skip
    torch.testing.assert_close(res.x, plain)
    assert res.nfe == 12 and res.resamples == 0


@pytest.mark.parametrize("ess_threshold", [0.5, 1.0])
def test_fk_particles_match_the_tilted_mode_weights(ess_threshold):
    """Data 0.5 N(-2, 0.5^2) + 0.5 N(2, 0.5^2) tilted by exp(lam x): mode weights proportional to
    w_k exp(lam mu_k + lam^2 s^2 / 2), 0.731 on the right mode for lam = 0.25."""
    gm = GaussianMixture([[-2.0], [2.0]], 0.5)
    lam, groups, k = 0.25, 500, 64
    target = 1.0 / (1.0 + math.exp(-4 * lam))
    sigmas = schedules.karras(50, 0.002, 40.0, 7.0).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(groups * k, 1, generator=g, dtype=torch.float64) * sigmas[0]
    res = steering.fk_steer(gm.denoise, x, sigmas, lambda x0: x0[:, 0], particles=k, lam=lam,
                            ess_threshold=ess_threshold, generator=g)  # fmt: skip
    right = (res.x[:, 0] > 0).double().reshape(groups, k)
    weighted = float((res.log_weights.exp() * right).sum(dim=1).mean())
    picks = steering.select(res.log_weights, res.rewards, "sample", g)
    drawn = float((res.x[picks, 0] > 0).double().mean())
    assert abs(weighted - target) < 0.03
    assert abs(drawn - target) < 0.07  # one draw per group: binomial error ~0.02
    assert (res.resamples > 0) == (ess_threshold == 1.0)
    base = steering.fk_steer(gm.denoise, x, sigmas, lambda x0: x0[:, 0], particles=k, lam=0.0, generator=g)
    assert abs(float((base.x[:, 0] > 0).double().mean()) - 0.5) < 0.03


def make_policy(**sampler) -> DiffusionPolicy:
    policy = DiffusionPolicy(OBS, ACT, horizon=H, n_obs_steps=TO, n_action_steps=TA, backbone="mlp",
                             backbone_kwargs={"hidden": 32, "depth": 1, "embed_dim": 16},
                             sampler={"solver": "dpmpp_2m", "steps": 4, **sampler})  # fmt: skip
    policy.fit_normalizers(np.array([[-1.0] * OBS, [1.0] * OBS]), np.array([[-1.0] * ACT, [1.0] * ACT]))
    return policy


def first_action_sum(obs, actions):
    return actions[:, 0].sum(dim=-1)


def test_best_of_n_policy_executes_the_best_of_the_policys_own_candidates():
    policy = make_policy()
    steered = SteeredPolicy(policy, FunctionVerifier(first_action_sum), method="best_of_n", n=16)
    hist = torch.rand(2, TO, OBS) * 2 - 1
    steered.seed(5)
    chunk = steered.predict_chunk(hist)
    policy.seed(5)
    candidates = policy.predict_chunk(hist.repeat_interleave(16, dim=0)).reshape(2, 16, H, ACT)
    scores = candidates[:, :, TO - 1].sum(dim=-1)
    best = candidates[torch.arange(2), scores.argmax(dim=1)]
    torch.testing.assert_close(chunk, best)
    assert steered.last_cost == {"nfe": 16 * 4, "verifier_calls": 16}
    steered.reset(seed=0)
    action = steered.act(np.zeros(OBS, np.float32))
    assert action.shape == (ACT,) and steered.cost["decisions"] == 2


@pytest.mark.parametrize("method", ["fk", "gradient"])
def test_steering_raises_the_verifier_score(method):
    policy = make_policy(solver="ddpm", steps=8)
    verifier = FunctionVerifier(first_action_sum, differentiable=True)
    hist = torch.zeros(64, TO, OBS)
    policy.seed(0)
    plain = first_action_sum(None, policy.predict_chunk(hist)[:, TO - 1 :]).mean()
    settings = {"lam": 20.0} if method == "fk" else {"scale": 0.5, "n": 1}
    steered = SteeredPolicy(policy, verifier, method=method, **{"n": 8, **settings}, seed=0)
    chunks = steered.predict_chunk(hist)
    assert chunks.shape == (64, H, ACT) and bool(torch.isfinite(chunks).all())
    assert float(first_action_sum(None, chunks[:, TO - 1 :]).mean()) > float(plain) + 0.2


def test_steering_refuses_what_it_cannot_run():
    policy = make_policy()
    with pytest.raises(ValueError, match="differentiable verifier"):
        SteeredPolicy(policy, FunctionVerifier(first_action_sum), method="gradient")
    with pytest.raises(ValueError, match=r"steering\.n"):
        SteeredPolicy(policy, FunctionVerifier(first_action_sum), n=0)
    with pytest.raises(ValueError, match="fused"):
        SteeredPolicy(make_policy(fused=True), FunctionVerifier(first_action_sum))
    with pytest.raises(ValueError, match="no critic"):
        QVerifier(policy)
    verifier = FunctionVerifier(first_action_sum)
    verifier.task = "maze2d-large"
    policy.task = "maze2d-umaze"
    with pytest.raises(ValueError, match="maze2d-umaze"):
        SteeredPolicy(policy, verifier)
    with pytest.raises(ValueError, match="shape"):
        SteeredPolicy(make_policy(), FunctionVerifier(lambda o, a: a.sum())).predict_chunk(
            torch.zeros(2, TO, OBS)
        )


class Drift(WorldModel):
    """s' = s + a (the first ACT features move), reward = s'[0]."""

    state_dim, action_dim, segment = OBS, ACT, 1

    def predict_segment(self, obs, actions, generator=None):
        nxt = obs.clone()
        nxt[:, :ACT] += actions[:, 0]
        return {
            "observations": nxt[:, None],
            "rewards": nxt[:, None, 0],
            "terminals": torch.zeros(len(obs), 1),
        }


def test_world_model_verifier_is_the_discounted_imagined_return():
    verifier = WorldModelVerifier(Drift(), discount=0.5, steps=2, value=lambda s: 10 * s[:, 1])
    obs = torch.tensor([[1.0, 0.0, 0.0]])
    actions = torch.tensor([[[1.0, 2.0], [1.0, 0.0], [9.0, 9.0]]])
    # s1 = (2, 2), s2 = (3, 2): rewards 2 and 3, value of s2 = 20
    assert float(verifier(obs, actions)) == pytest.approx(2 + 0.5 * 3 + 0.25 * 20)
    progress = WorldModelVerifier(Drift(), reward=lambda s: -s[..., 0].abs())
    assert float(progress(obs, actions[:, :1])) == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="whole observation"):
        verifier(torch.zeros(1, 5), actions)


def test_q_verifier_is_the_target_critics_min_and_differentiable_in_the_action():
    from diffctl.policies.offline_rl.idql import IDQL

    agent = IDQL(OBS, ACT, hidden=16, depth=1, critic_hidden=16, critic_depth=1)
    agent.fit_normalizers(np.array([[-1.0] * OBS, [1.0] * OBS]), np.array([[-1.0] * ACT, [1.0] * ACT]))
    obs, actions = torch.rand(4, OBS) * 2 - 1, (torch.rand(4, H, ACT) * 2 - 1).requires_grad_(True)
    scores = QVerifier(agent)(obs, actions)
    q1, q2 = agent.network.critic_target(
        obs, actions[:, 0].detach()
    )  # limits [-1, 1]: normalization is identity
    torch.testing.assert_close(scores.detach(), torch.minimum(q1, q2).detach())
    scores.sum().backward()
    assert actions.grad[:, 0].abs().sum() > 0 and actions.grad[:, 1:].abs().sum() == 0
    assert all(p.grad is None for p in agent.network.critic_target.parameters())
