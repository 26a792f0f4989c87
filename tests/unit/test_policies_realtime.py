"""RTI warm start and real-time chunking wrappers on a tiny bimodal policy (chunks are all +a or all -a)."""

import numpy as np
import pytest
import torch

import diffctl as dc
from diffctl.kernels.guidance import prefix_weights
from diffctl.policies import DiffusionPolicy
from diffctl.policies.realtime import RealTimePolicy, RTCPolicy, RTIPolicy, shift_chunk

OBS, ACT, H, TO, TA = 4, 2, 8, 2, 4


def bimodal_batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, TO, OBS, generator=g) * 2 - 1
    sign = torch.randint(0, 2, (n, 1, 1), generator=g).float() * 2 - 1
    actions = (sign * 0.7 + 0.05 * torch.linspace(-1, 1, H).reshape(1, H, 1)).expand(n, H, ACT).clone()
    return {"obs": obs, "actions": actions}


@pytest.fixture(scope="module")
def policy() -> DiffusionPolicy:
    pol = DiffusionPolicy(
        OBS, ACT, horizon=H, n_obs_steps=TO, n_action_steps=TA, backbone="mlp",
        backbone_kwargs={"hidden": 128, "depth": 2, "embed_dim": 32},
        sampler={"solver": "dpmpp_2m", "steps": 8},
    )  # fmt: skip
    pol.fit_normalizers(np.array([[-1.0] * OBS, [1.0] * OBS]), np.array([[-1.0] * ACT, [1.0] * ACT]))
    torch.manual_seed(0)
    opt = torch.optim.Adam(pol.network.parameters(), lr=3e-3)
    for step in range(400):
        loss, _ = pol.loss(bimodal_batch(128, step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return pol


def rollout(agent, ticks: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    agent.reset(seed=seed)
    return np.stack([agent.act(rng.uniform(-1, 1, OBS).astype(np.float32)) for _ in range(ticks)])


def test_shift_chunk_repeats_last_action():
    chunk = torch.arange(5.0).reshape(1, 5, 1)
    assert shift_chunk(chunk, 2)[0, :, 0].tolist() == [2, 3, 4, 4, 4]
    assert torch.equal(shift_chunk(chunk, 0), chunk)


@pytest.mark.parametrize(
    "make", [lambda p: RTIPolicy(p, warm_sigma=0.3, warm_steps=2), lambda p: RTCPolicy(p, delay=2)]
)
def test_valid_actions_from_first_tick(policy, make):
    agent = make(policy)
    actions = rollout(agent, ticks=20)
    assert actions.shape == (20, ACT) and np.isfinite(actions).all()
    assert (np.abs(actions) <= 1.0 + 1e-6).all()
    assert np.abs(actions).min() > 0.3  # every action, the first included, lies on a mode (+-0.7)


def test_rti_costs_warm_steps_after_first_chunk(policy):
    agent = RTIPolicy(policy, warm_sigma=0.3, warm_steps=2)
    rollout(agent, ticks=1)
    assert agent.nfe == 8  # cold first chunk with the policy's own sampler
    rollout_more = [agent.act(np.zeros(OBS, np.float32)) for _ in range(2 * TA)]
    assert len(rollout_more) == 2 * TA and agent.nfe == 8 + 2 * 2


def test_rti_keeps_the_mode_of_the_previous_chunk(policy):
    agent = RTIPolicy(policy, warm_sigma=0.2, warm_steps=2)
    actions = rollout(agent, ticks=80)
    assert len(set(np.sign(actions[:, 0]).tolist())) == 1  # the warm start never flips between modes


def test_hard_prefix_is_preserved(policy):
    agent = RealTimePolicy(policy, seam="inpaint")
    agent.seed(0)
    prefix = torch.full((1, 3, ACT), -0.5)
    chunk = agent.predict_chunk(np.zeros((1, TO, OBS)), prefix=prefix)
    assert torch.allclose(chunk[:, :3], prefix, atol=1e-5)


def test_soft_prefix_weights(policy):
    agent = RealTimePolicy(policy, seam="rtc", delay=2)
    agent.seed(0)
    prefix = torch.full((1, H, ACT), 0.7)
    w = prefix_weights(H, 3)
    chunk = agent.predict_chunk(np.zeros((1, TO, OBS)), prefix=prefix, weights=w)
    assert torch.allclose(chunk[:, :3], prefix[:, :3], atol=1e-5)
    assert (chunk > 0).all()  # the decaying weights pull the whole chunk into the prefix's mode


def test_rtc_seams_smoother_than_naive(policy):
    jumps = {}
    for seam in ("naive", "blend", "rtc"):
        agent = RealTimePolicy(policy, seam=seam, delay=2)
        rollout(agent, ticks=120, seed=1)
        stats = agent.stats()
        assert stats["seams"] >= 20 and stats["nfe_per_tick"] > 0
        jumps[seam] = stats["seam_jump"]
    assert jumps["naive"] > 0.3, jumps  # independent chunks switch modes at about half the seams
    assert jumps["rtc"] < 0.25 * jumps["naive"], jumps
    assert jumps["blend"] < jumps["naive"], jumps


def test_bad_settings_raise(policy):
    with pytest.raises(ValueError, match="seam"):
        RealTimePolicy(policy, seam="smooth")
    with pytest.raises(ValueError, match="replan_every"):
        RealTimePolicy(policy, delay=H)
    with pytest.raises(ValueError, match="warm_sigma"):
        RTIPolicy(policy, warm_sigma=0.001)
    with pytest.raises(ValueError, match="obs_history"):
        RealTimePolicy(policy).predict_chunk(np.zeros((1, TO + 1, OBS)))


def test_save_load_roundtrip(policy, tmp_path):
    agent = RTCPolicy(policy, delay=3, warm_sigma=0.3)
    agent.save(tmp_path / "agent")
    back = RealTimePolicy.load(tmp_path / "agent", steps=4)
    assert back.options == agent.options and back.policy.sampler.steps == 4
    plain = dc.load(tmp_path / "agent")
    assert isinstance(plain, DiffusionPolicy)
    a, b = rollout(agent, 10, seed=3), rollout(RealTimePolicy.load(tmp_path / "agent"), 10, seed=3)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_naive_wrapper_acts_like_the_plain_policy(policy):
    a = rollout(policy, ticks=3 * TA, seed=4)
    b = rollout(RealTimePolicy(policy, seam="naive"), ticks=3 * TA, seed=4)
    np.testing.assert_allclose(a, b, atol=1e-6)  # same noise draws, grid, conditioning and solver


def test_act_runs_in_eval_mode_and_restores_each_modules_mode(policy):
    net = policy.network
    seen = []
    hook = net.register_forward_pre_hook(lambda m, args: seen.append([x.training for x in m.modules()]))
    try:
        net.train()
        net.encoder.eval()
        RealTimePolicy(policy, warm_sigma=0.5).act(np.zeros(OBS, np.float32))
        assert seen and not any(any(flags) for flags in seen)
        assert net.training and net.backbone.training and not net.encoder.training
    finally:
        hook.remove()
        net.train()


def test_grid_memo_follows_the_sampler(policy):
    grid = policy.sigmas()
    grid.mul_(0)
    assert float(policy.sigmas()[0]) == pytest.approx(policy.sampler.sigma_max)
    assert len(policy.sigmas(policy.sampler.replace(steps=3))) == 4
    assert len(policy.sigmas()) == policy.sampler.steps + 1


def test_non_finite_histories_raise(policy):
    bad = np.zeros((1, TO, OBS), np.float32)
    bad[0, 0, 1] = np.nan
    for agent in (policy, RealTimePolicy(policy)):
        with pytest.raises(ValueError, match="NaN"):
            agent.predict_chunk(bad)
        with pytest.raises(ValueError, match="NaN"):
            agent.predict_chunk(torch.as_tensor(bad))
        with pytest.raises(ValueError, match="obs_history"):
            agent.predict_chunk(np.zeros((TO, OBS)))


def test_wrapper_refuses_an_observation_whose_shape_changes_within_an_episode():
    pol = DiffusionPolicy(OBS, ACT, goal_dim=2, horizon=H, n_obs_steps=TO, n_action_steps=TA, backbone="mlp",
                          backbone_kwargs={"hidden": 8, "depth": 1}, sampler={"steps": 2})  # fmt: skip
    pol.fit_normalizers(np.array([[0.0] * OBS, [1.0] * OBS]), np.array([[-1.0] * ACT, [1.0] * ACT]),
                        np.array([[0.0, 0.0], [1.0, 1.0]]))  # fmt: skip
    rt = RealTimePolicy(pol, seam="naive")
    rt.act(np.zeros(OBS + 2, np.float32))
    with pytest.raises(ValueError, match=r"shape changed within an episode: \(6,\) -> \(4,\)"):
        rt.act(np.zeros(OBS, np.float32))
    rt.reset()
    assert rt.act(np.zeros(OBS, np.float32)).shape == (ACT,)  # a new episode may use the other layout
