"""Fused sampling (``SamplerConfig.fused``): one frozen graph per shape that reproduces the eager path."""

import copy

import numpy as np
import pytest
import torch

import diffctl as dc
from diffctl.policies import DiffusionPolicy
from diffctl.policies.base import SamplerConfig
from diffctl.policies.consistency import ConsistencyPolicy
from diffctl.policies.flow import FlowPolicy
from diffctl.policies.realtime import RealTimePolicy
from diffctl.policies.streaming import StreamingDiffusionPolicy

OBS, ACT, GOAL, H, TO, TA = 4, 2, 2, 8, 2, 4
TOL = 1e-4


def build(cls=DiffusionPolicy, goal: bool = True, **kwargs):
    extra = {"goal_dim": GOAL} if goal else {}
    if cls is not StreamingDiffusionPolicy:
        extra.update(backbone="mlp")
    extra.update(backbone_kwargs={"hidden": 64, "depth": 2, "embed_dim": 16})
    pol = cls(OBS, ACT, horizon=H, n_obs_steps=TO, n_action_steps=TA, **{**extra, **kwargs})
    ones = np.ones((1, OBS))
    goals = np.array([[-1.0] * GOAL, [2.0] * GOAL]) if goal else None
    pol.fit_normalizers(np.concatenate([-ones, 3 * ones]), np.array([[-1.0] * ACT, [0.5] * ACT]), goals)
    return pol


def fused_copy(pol, **sampler):
    """The same policy (shared network) with ``fused=True`` and other sampler fields changed."""
    twin = copy.copy(pol)  # pickling state: the network is shared, the memo of graphs is not
    twin.sampler = pol.sampler.replace(fused=True, **sampler)
    return twin


def histories(batch: int = 1, goal: bool = True, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, TO, OBS + (GOAL if goal else 0))).astype(np.float32)


@pytest.mark.parametrize(
    "make, sampler",
    [
        (lambda: build(), {"solver": "dpmpp_2m", "steps": 5}),
        (lambda: build(), {"solver": "heun", "steps": 3, "guidance_scale": 2.0}),
        (lambda: build(goal=False), {"solver": "ddim", "steps": 6}),
        (lambda: build(parameterization="vp", goal=False), {"solver": "ddim", "steps": 10}),
        (lambda: ConsistencyPolicy.from_teacher(build()), {"steps": 1}),
        (lambda: build(FlowPolicy), {"solver": "euler", "steps": 4}),
        (
            lambda: build(backbone="unet", backbone_kwargs={"down_dims": (16, 32), "embed_dim": 16}),
            {"steps": 3},
        ),
        (lambda: build(backbone="dit", backbone_kwargs={"dim": 32, "depth": 2, "heads": 2}), {"steps": 3}),
    ],
    ids=[
        "edm-dpmpp_2m",
        "edm-heun-guided",
        "edm-ddim-no-goal",
        "vp-ddim",
        "consistency-1",
        "flow",
        "unet",
        "dit",
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_chunks_match_eager(make, sampler, batch):
    pol = make()
    pol.sampler = pol.sampler.replace(**sampler)
    goal = bool(pol.goal_dim)
    hist = histories(batch, goal)
    noise = torch.randn(batch, H, ACT, generator=torch.Generator().manual_seed(4))
    eager = pol.predict_chunk(hist, noise=noise)
    twin = fused_copy(pol)
    fused = twin.predict_chunk(hist, noise=noise)
    assert fused.shape == (batch, H, ACT) and any(k[0] == "fused" for k in twin._cache)
    torch.testing.assert_close(fused, eager, atol=TOL, rtol=0)


def test_fused_warm_start_matches_eager():
    pol = build()
    pol.sampler = pol.sampler.replace(steps=8, warm_start=1.0)
    hist, init = histories(), torch.rand(1, H, ACT) - 0.5
    noise = torch.randn(1, H, ACT, generator=torch.Generator().manual_seed(1))
    eager = pol.predict_chunk(hist, noise=noise, init=init)
    torch.testing.assert_close(
        fused_copy(pol).predict_chunk(hist, noise=noise, init=init), eager, atol=TOL, rtol=0
    )
    cold = pol.predict_chunk(hist, noise=noise)
    assert float((cold - eager).abs().max()) > 1e-3


def rollout(agent, ticks: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    agent.reset(seed=seed)
    return np.stack([agent.act(rng.uniform(-1, 1, OBS + GOAL).astype(np.float32)) for _ in range(ticks)])


@pytest.mark.parametrize(
    "options",
    [{"seam": "naive"}, {"seam": "naive", "warm_sigma": 2.0, "warm_steps": 2}, {"seam": "rtc", "delay": 1}],
)
def test_realtime_wrapper_acts_the_same_fused(options):
    pol = build()
    pol.sampler = pol.sampler.replace(steps=5)
    eager, fused = RealTimePolicy(pol, **options), RealTimePolicy(fused_copy(pol), **options)
    np.testing.assert_allclose(rollout(fused), rollout(eager), atol=TOL)
    assert fused.stats()["nfe_per_tick"] == pytest.approx(eager.stats()["nfe_per_tick"])


@pytest.mark.parametrize("warm_start", [0.0, 1.0])
def test_chunk_policy_acts_the_same_fused(warm_start):
    pol = build()
    pol.sampler = pol.sampler.replace(steps=5, warm_start=warm_start)
    twin = fused_copy(pol)
    eager, fused = rollout(pol), rollout(twin)
    np.testing.assert_allclose(fused, eager, atol=TOL)
    assert fused.dtype == np.float32 and any(k[0] == "fused" for k in twin._cache)


def test_streaming_ticks_the_same_fused():
    pol = build(StreamingDiffusionPolicy, steps_per_tick=2)
    twin = fused_copy(pol)
    np.testing.assert_allclose(rollout(twin), rollout(pol), atol=TOL)
    assert twin.nfe == pol.nfe and any(k[0] == "fused" for k in twin._cache)


def test_graph_follows_in_place_weight_updates():
    pol = fused_copy(build(goal=False))
    hist, noise = histories(goal=False), torch.randn(1, H, ACT)
    before = pol.predict_chunk(hist, noise=noise)
    with torch.no_grad():
        for p in pol.network.parameters():
            p.mul_(0.5)
    after = pol.predict_chunk(hist, noise=noise)
    assert float((after - before).abs().max()) > 1e-3
    eager = copy.copy(pol)
    eager.sampler = pol.sampler.replace(fused=False)
    torch.testing.assert_close(after, eager.predict_chunk(hist, noise=noise), atol=TOL, rtol=0)
    assert sum(k[0] == "fused" for k in pol._cache) == 1


def test_graph_follows_replaced_parameters():
    pol = fused_copy(build(goal=False))
    hist, noise = histories(goal=False), torch.randn(1, H, ACT)
    before = pol.predict_chunk(hist, noise=noise)
    halved = {k: 0.5 * v for k, v in pol.network.state_dict().items()}
    pol.network.load_state_dict(halved, assign=True)  # new parameter objects, old ones untouched
    eager = copy.copy(pol)
    eager.sampler = pol.sampler.replace(fused=False)
    after = pol.predict_chunk(hist, noise=noise)
    assert float((after - before).abs().max()) > 1e-3
    torch.testing.assert_close(after, eager.predict_chunk(hist, noise=noise), atol=TOL, rtol=0)


def test_noise_level_work_is_folded_out_of_the_graph():
    from diffctl.policies.fused import fused_chunk_sampler, trace_frozen
    from diffctl.policies.realtime import conditioned_denoiser

    pol = ConsistencyPolicy.from_teacher(build(goal=False))
    pol.sampler = pol.sampler.replace(steps=1)
    hist = torch.from_numpy(histories(goal=False))
    x, sigma = torch.zeros(1, H, ACT), torch.ones(1)
    forward = trace_frozen(conditioned_denoiser(pol, hist), pol.network, (x, sigma), "forward")
    chunk, _ = fused_chunk_sampler(pol, pol.grid(), hist, warm=False)

    def linears(graph) -> int:
        return sum(n.kind() == "aten::linear" for n in graph.graph.nodes())

    embedding = sum(isinstance(m, torch.nn.Linear) for m in pol.network.backbone.noise_emb.modules())
    assert embedding > 0 and linears(chunk) == linears(forward) - embedding


def test_stochastic_solvers_are_refused():
    pol = fused_copy(build(goal=False), solver="ddpm", steps=4)
    with pytest.raises(ValueError, match="deterministic"):
        pol.predict_chunk(histories(goal=False))
    chained = fused_copy(ConsistencyPolicy.from_teacher(build(goal=False)), steps=2)
    with pytest.raises(ValueError, match="'consistency'"):
        chained.predict_chunk(histories(goal=False))


def test_inpainting_falls_back_to_the_eager_path():
    pol = build(goal=False)
    prefix = torch.full((1, 3, ACT), 0.25)
    out = fused_copy(pol).predict_chunk(histories(goal=False), prefix=prefix)
    torch.testing.assert_close(out[:, :3], prefix, atol=1e-5, rtol=0)


def test_fused_is_a_sampler_field(tmp_path):
    with pytest.raises(ValueError, match="fused"):
        SamplerConfig(fused="yes")
    pol = build()
    pol.save(tmp_path / "p")
    loaded = dc.load(tmp_path / "p", fused=True)
    assert loaded.sampler.fused and not pol.sampler.fused
    torch.testing.assert_close(
        loaded.predict_chunk(histories(), noise=torch.zeros(1, H, ACT)),
        pol.predict_chunk(histories(), noise=torch.zeros(1, H, ACT)),
        atol=TOL, rtol=0,
    )  # fmt: skip


def test_agents_that_do_not_fuse_refuse_the_flag():
    from diffctl.planners import Diffuser
    from diffctl.policies.offline_rl import IDQL

    with pytest.raises(ValueError, match="not supported by IDQL"):
        IDQL(OBS, ACT, sampler={"fused": True})
    with pytest.raises(ValueError, match="not supported by Diffuser"):
        Diffuser(OBS, ACT, horizon=H, sampler={"fused": True})


def test_graphs_per_policy_are_bounded():
    from diffctl.policies.fused import MAX_GRAPHS

    pol = fused_copy(build(goal=False))
    for batch in range(1, MAX_GRAPHS + 3):
        assert pol.predict_chunk(histories(batch, goal=False)).shape == (batch, H, ACT)
    assert sum(k[0] == "fused" for k in pol._cache) == MAX_GRAPHS
