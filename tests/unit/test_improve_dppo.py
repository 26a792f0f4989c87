"""DPPO and D3PO: the chain's transition likelihoods are exact, runs resume exactly, and PPO or preferences
through the chain improve a poor policy on a toy task."""

import math

import numpy as np
import pytest
import torch
from helpers import LINE_STEPS as STEPS
from helpers import Line, base_policy

import diffctl as dc
from diffctl.improve.d3po import D3PO, D3POConfig, finetune_d3po, preferred_pairs
from diffctl.improve.dppo import DenoisingChain, DPPOConfig, finetune_dppo
from diffctl.policies import DiffusionPolicy
from diffctl.train.metrics import read_metrics


def test_chain_log_prob_is_the_density_of_the_drawn_noise(tmp_path):
    policy = base_policy(tmp_path)
    chain = DenoisingChain(policy, steps=4, min_std=0.1)
    hist = torch.tensor([[[0.2, 1.0]], [[-0.5, -1.0]]])
    _, states = chain.sample(hist, torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)
    torch.randn(states[0].shape, generator=replay)  # the start noise
    dims = states[0][0].numel()
    for k in range(4):
        z = torch.randn(states[0].shape, generator=replay).flatten(1)
        std = float(chain.std[k])
        expected = (-0.5 * z.pow(2) - math.log(std) - 0.5 * math.log(2 * math.pi)).sum(dim=1)
        got = chain.log_prob(hist, states[k], states[k + 1], torch.full((2,), k))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert dims == policy.horizon * policy.action_dim
    assert float(chain.std[-1]) == pytest.approx(0.1)  # the last step to sigma 0 keeps the exploration floor


def config(tmp_path, **kw):
    settings = {"base": str(tmp_path / "base"), "num_envs": 8, "env_steps": 8 * STEPS * 2, "hidden": 32,
                "denoising_steps": 3, "ft_steps": 2, "eval_episodes": 0, "checkpoint_every": 1,
                "minibatches": 2, "epochs": 2}  # fmt: skip
    return DPPOConfig.from_dict({**settings, **kw})


def run(cfg, run_dir, resume=False):
    return finetune_dppo(
        cfg, "line", run_dir, resume=resume, progress=False, env_fn=Line, episode_steps=STEPS
    )


def test_dppo_resume_is_exact_and_saves_a_diffusion_policy(tmp_path):
    base_policy(tmp_path)
    run(config(tmp_path), tmp_path / "straight")
    run(config(tmp_path, env_steps=8 * STEPS), tmp_path / "split")
    run(config(tmp_path), tmp_path / "split", resume=True)
    a, b = dc.load(tmp_path / "straight" / "checkpoint"), dc.load(tmp_path / "split" / "checkpoint")
    assert isinstance(a, DiffusionPolicy) and (a.sampler.solver, a.sampler.steps) == ("ddpm", 3)
    for key, value in a.network.state_dict().items():
        torch.testing.assert_close(value, b.network.state_dict()[key], rtol=0, atol=0)
    base = dc.load(tmp_path / "base").network.state_dict()
    assert any(not torch.equal(v, base[k]) for k, v in a.network.state_dict().items())


def test_dppo_improves_a_poor_policy(tmp_path):
    base_policy(tmp_path)
    cfg = config(tmp_path, env_steps=30 * 8 * STEPS, actor_lr=3e-3, clip=0.1, min_std=0.3, epochs=4)
    run(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    first = np.mean([r["train/mean_return"] for r in records[:5]])
    last = np.mean([r["train/mean_return"] for r in records[-5:]])
    assert last > first + 1.0, (first, last)


def test_preferred_pairs_by_return_and_by_success():
    returns, success = np.array([1.0, 2.0, 5.0, 5.0, -1.0, -3.0]), np.array([True, False, 0, 0, 0, 1], bool)
    assert preferred_pairs(returns, success, "return") == [(1, 0), (4, 5)]  # the tie (2, 3) is dropped
    assert preferred_pairs(returns, success, "success") == [(0, 1), (5, 4)]


def d3po_config(tmp_path, **kw):
    settings = {"base": str(tmp_path / "base"), "num_envs": 8, "env_steps": 8 * STEPS * 2,
                "denoising_steps": 3, "ft_steps": 2, "eval_episodes": 0, "checkpoint_every": 1,
                "minibatches": 2, "epochs": 2}  # fmt: skip
    return D3POConfig.from_dict({**settings, **kw})


def d3po_run(tmp_path, run_dir, resume=False, **kw):
    options = {"resume": resume, "progress": False, "env_fn": Line, "episode_steps": STEPS}
    return finetune_d3po(d3po_config(tmp_path, **kw), "line", run_dir, **options)


def test_d3po_resumes_exactly(tmp_path):
    base_policy(tmp_path)
    d3po_run(tmp_path, tmp_path / "straight")
    d3po_run(tmp_path, tmp_path / "split", env_steps=8 * STEPS)
    d3po_run(tmp_path, tmp_path / "split", resume=True)
    a, b = dc.load(tmp_path / "straight" / "checkpoint"), dc.load(tmp_path / "split" / "checkpoint")
    for key, value in a.network.state_dict().items():
        torch.testing.assert_close(value, b.network.state_dict()[key], rtol=0, atol=0)


def test_a_d3po_update_prefers_the_preferred_transitions(tmp_path):
    """Before the update the policy is its reference (every logit 0, DPO loss log 2); after it, the preferred
    episodes' transitions gained likelihood against the rejected ones' on the pairs it was trained on."""
    import gymnasium as gym

    base_policy(tmp_path)
    tuner = D3PO(d3po_config(tmp_path, actor_lr=1e-3, epochs=5), dc.load(tmp_path / "base"))
    envs = gym.vector.SyncVectorEnv([Line] * 8)
    batch = tuner.collect(envs, STEPS, 0)
    sides = tuner.pair_transitions(batch)
    everything = torch.arange(len(sides["k"]))
    with torch.no_grad():
        assert float(tuner.logits(sides, everything).abs().max()) < 1e-5
    tuner.update(batch)
    with torch.no_grad():
        after = tuner.logits(sides, everything)
    dpo_loss = float(-torch.nn.functional.logsigmoid(after).mean())
    assert dpo_loss < math.log(2) - 0.01 and float((after > 0).float().mean()) > 0.5
