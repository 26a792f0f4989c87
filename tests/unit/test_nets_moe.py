"""Noise-routed mixture of experts: routing depends on the noise level only, a batch at one level runs only
its top-k experts, the sparse block equals its dense definition, and a policy trains and acts with it."""

import numpy as np
import torch

from diffctl.nets.moe import MoEDenoiserNet, NoiseRoutedMoEBlock
from diffctl.policies import DiffusionPolicy


def test_sparse_block_equals_the_dense_mixture_and_skips_inactive_experts():
    torch.manual_seed(0)
    block = NoiseRoutedMoEBlock(hidden=8, embed_dim=4, num_experts=4, top_k=2)
    h, emb = torch.randn(6, 8), torch.randn(6, 4)
    weights = block.routing(emb)
    assert ((weights > 0).sum(dim=1) == 2).all() and torch.allclose(weights.sum(dim=1), torch.ones(6))
    x = block.norm(h)
    dense = h + sum(weights[:, e, None] * expert(x) for e, expert in enumerate(block.experts))
    torch.testing.assert_close(block(h, emb), dense)
    calls = []
    for e, expert in enumerate(block.experts):
        expert.register_forward_pre_hook(lambda m, a, e=e: calls.append(e))
    one_level = emb[:1].expand(6, -1)  # one noise level for the whole batch
    out = block(h, one_level)
    assert sorted(calls) == weights[0].nonzero().flatten().tolist()
    w = block.routing(one_level)
    torch.testing.assert_close(
        out, h + sum(w[:, e, None] * expert(x) for e, expert in enumerate(block.experts))
    )


def test_routing_reads_the_noise_level_not_the_sample():
    torch.manual_seed(0)
    net = MoEDenoiserNet(action_dim=2, horizon=4, cond_dim=3, hidden=16, depth=2, embed_dim=8, num_experts=4)
    sigma = torch.full((5,), 0.7)
    experts = net.active_experts(sigma[0])
    assert len(experts) == 2 and all(len(e) == 1 for e in experts)
    calls = []
    for block in net.blocks:
        for e, expert in enumerate(block.experts):
            expert.register_forward_pre_hook(lambda m, a, e=e: calls.append(e))
    out = net(torch.randn(5, 4, 2), sigma, torch.randn(5, 3))
    assert out.shape == (5, 4, 2) and calls == [e[0] for e in experts]


def test_a_moe_policy_trains_and_acts():
    policy = DiffusionPolicy(2, 2, horizon=4, n_obs_steps=1, n_action_steps=2, backbone="moe",
                             backbone_kwargs={"hidden": 32, "depth": 2, "embed_dim": 16, "num_experts": 4},
                             sampler={"solver": "euler", "steps": 3})  # fmt: skip
    policy.fit_normalizers(np.array([[-1.0, -1.0], [1.0, 1.0]]), np.array([[-1.0, -1.0], [1.0, 1.0]]))
    batch = {"obs": torch.rand(16, 1, 2), "actions": torch.rand(16, 4, 2) * 0.5}
    loss, _ = policy.loss(batch)
    loss.backward()
    assert all(p.grad is not None for p in policy.network.backbone.inp.parameters())
    policy.reset(seed=0)
    assert policy.act(np.zeros(2, np.float32)).shape == (2,)


def test_the_fused_graph_of_a_moe_policy_matches_eager():
    policy = DiffusionPolicy(2, 2, horizon=4, n_obs_steps=1, n_action_steps=2, backbone="moe",
                             backbone_kwargs={"hidden": 32, "depth": 2, "embed_dim": 16, "num_experts": 4},
                             sampler={"solver": "dpmpp_2m", "steps": 4})  # fmt: skip
    policy.fit_normalizers(np.array([[-1.0, -1.0], [1.0, 1.0]]), np.array([[-1.0, -1.0], [1.0, 1.0]]))
    hist, noise = torch.rand(3, 1, 2), torch.randn(3, 4, 2)
    eager = policy.predict_chunk(hist, noise=noise)
    policy.sampler = policy.sampler.replace(fused=True)
    torch.testing.assert_close(policy.predict_chunk(hist, noise=noise), eager, atol=1e-4, rtol=1e-4)


def test_cached_routes_equal_the_routed_forward_and_follow_weight_updates():
    torch.manual_seed(0)
    net = MoEDenoiserNet(action_dim=2, horizon=4, cond_dim=3, hidden=16, depth=2, embed_dim=8).eval()
    x, sigma, cond = torch.randn(5, 4, 2), torch.full((5,), 0.3), torch.randn(5, 3)
    with torch.no_grad():
        cached = net(x, sigma, cond)
        assert len(net.routes) == 1
    torch.testing.assert_close(cached, net(x, sigma, cond).detach())  # with gradients: no cache
    with torch.no_grad():
        for block in net.blocks:
            block.router.bias.add_(torch.tensor([5.0, -5.0, -5.0, -5.0]))  # expert 0 everywhere now
        assert net.active_experts(sigma[0]) == [[0], [0]]
        torch.testing.assert_close(net(x, sigma, cond), torch.enable_grad()(net)(x, sigma, cond).detach())
        assert len(net.routes) == 2
