"""StreamingDiffusionPolicy: per-timestep noise levels, k NFE per tick, valid actions from the first tick."""

import pickle

import numpy as np
import pytest
import torch

import diffctl as dc
from diffctl.kernels.denoisers import PerStepEDMDenoiser
from diffctl.kernels.schedules import karras_at
from diffctl.policies.streaming import StreamingDiffusionPolicy

OBS, ACT, GOAL, H, TO, TA = 4, 2, 2, 8, 2, 4


def batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Static observations; actions ramp from 0.6 * obs[:2] to 0.6 * goal over the window."""
    g = torch.Generator().manual_seed(seed)
    obs = (torch.rand(n, 1, OBS, generator=g) * 2 - 1).expand(n, TO, OBS)
    goal = torch.rand(n, GOAL, generator=g) * 2 - 1
    ramp = torch.linspace(0, 1, H).reshape(1, H, 1)
    actions = 0.6 * obs[:, -1:, :ACT] * (1 - ramp) + 0.6 * goal.unsqueeze(1) * ramp
    return {"obs": obs, "goal": goal, "actions": actions}


def make(**kwargs) -> StreamingDiffusionPolicy:
    pol = StreamingDiffusionPolicy(
        OBS, ACT, goal_dim=GOAL, horizon=H, n_obs_steps=TO, n_action_steps=TA,
        backbone_kwargs={"hidden": 128, "depth": 2, "embed_dim": 16}, **kwargs,
    )  # fmt: skip
    ones = np.ones((1, OBS))
    pol.fit_normalizers(np.concatenate([-ones, ones]), np.array([[-1.0] * ACT, [1.0] * ACT]),
                        np.array([[-1.0] * GOAL, [1.0] * GOAL]))  # fmt: skip
    return pol


@pytest.fixture(scope="module")
def trained() -> StreamingDiffusionPolicy:
    pol = make(steps_per_tick=1, goal_dropout=0.0)
    torch.manual_seed(0)
    opt = torch.optim.Adam(pol.network.parameters(), lr=2e-3)
    for step in range(500):
        loss, _ = pol.loss(batch(128, step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    pol.final_loss = loss.item()
    return pol


def test_per_step_denoiser_matches_edm_scalings():
    net = lambda x, c, cond: torch.zeros_like(x)
    den = PerStepEDMDenoiser(net, sigma_data=0.5)
    x = torch.ones(1, 3, 2)
    sigma = torch.tensor([[0.0, 0.5, 10.0]])
    out = den(x, sigma)
    expected = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(out[0, :, 0], expected[0])
    with pytest.raises(ValueError, match="sigma"):
        den(x, torch.ones(1, 2))


def test_karras_at_matches_grid():
    grid = dc.kernels.schedules.karras(6, 0.002, 80.0, 7.0).float()
    torch.testing.assert_close(karras_at(torch.arange(6.0), 6, 0.002, 80.0, 7.0), grid[:6])


def test_staircase_training_sigmas_rise_along_the_buffer():
    pol = make(steps_per_tick=2, staircase_prob=1.0, independent_prob=0.0)
    s = pol._train_sigmas(64, torch.device("cpu"))
    assert s.shape == (64, H - TO + 1)
    assert (s[:, 1:] > s[:, :-1]).all()


@pytest.mark.parametrize("k", [1, 2])
def test_nfe_per_tick_and_first_tick(k):
    pol = make(steps_per_tick=k)
    pol.reset(seed=0)
    first = pol.act(np.zeros(OBS + GOAL, np.float32))
    assert first.shape == (ACT,) and np.isfinite(first).all()
    assert pol.nfe == pol.levels == k * (H - TO + 1)
    for _ in range(10):
        assert np.isfinite(pol.act(np.zeros(OBS + GOAL, np.float32))).all()
    assert pol.nfe == pol.levels + 10 * k


def test_learns_and_streams_valid_actions(trained):
    assert trained.final_loss < 0.3, trained.final_loss
    data = batch(8, seed=999)
    hist = torch.cat([data["obs"], data["goal"].unsqueeze(1).expand(-1, TO, -1)], dim=-1)
    trained.seed(0)
    chunk = trained.predict_chunk(hist)
    assert chunk.shape == (8, H, ACT)
    err = (chunk[:, TO - 1 :] - data["actions"][:, TO - 1 :]).abs().mean().item()
    assert err < 0.12, err
    for i in range(4):
        trained.reset(seed=i)
        obs = hist[i, -1].numpy()
        acts = np.stack([trained.act(obs) for _ in range(3)])
        assert np.isfinite(acts).all() and (np.abs(acts) <= 1 + 1e-6).all()
        # the first streamed actions follow the window's own first planned actions (tick 0 = index To-1)
        assert np.abs(acts[0] - data["actions"][i, TO - 1].numpy()).max() < 0.2


def test_save_load_pickle_roundtrip(trained, tmp_path):
    trained.save(tmp_path / "s")
    back = dc.load(tmp_path / "s")
    assert isinstance(back, StreamingDiffusionPolicy) and back.steps_per_tick == 1
    obs = np.zeros(OBS + GOAL, np.float32)
    for agent in (back, pickle.loads(pickle.dumps(trained))):
        trained.reset(seed=5)
        agent.reset(seed=5)
        np.testing.assert_allclose([trained.act(obs) for _ in range(3)], [agent.act(obs) for _ in range(3)])


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="steps_per_tick"):
        make(steps_per_tick=0)
    with pytest.raises(ValueError, match="edm"):
        make(parameterization="vp")
    with pytest.raises(ValueError, match="prefix"):
        make().predict_chunk(np.zeros((1, TO, OBS)), prefix=torch.zeros(1, 2, ACT))


def reference_stream(pol: StreamingDiffusionPolicy, observations: np.ndarray, seed: int) -> np.ndarray:
    """The streaming algorithm written out from public pieces: entry j starts a tick at grid index
    N - k (j + 1), k per-entry Euler steps per tick, then the buffer shifts in fresh sigma_max noise."""
    gen = torch.Generator().manual_seed(seed)
    grid, n, k, hb = pol.stream_sigmas(), pol.levels, pol.steps_per_tick, pol.buffer_len
    start = n - k * (torch.arange(hb) + 1)
    denoise, norm = pol.denoiser(), pol.normalizers
    hist, buf, out = [], None, []
    for o in observations:
        hist = [o] * TO if not hist else [*hist[1:], o]
        h = torch.as_tensor(np.stack(hist))[None]
        cond = pol.network.condition(
            norm["obs"].normalize(h[..., :OBS]), norm["goal"].normalize(h[:, -1, OBS:]), torch.ones(1)
        )

        def euler(x, idx, cond=cond):
            s0, s1 = grid[idx], grid[(idx + 1).clamp(max=n)]
            x0 = denoise(x, s0[None], cond)
            return x0 + (s1 / s0)[None, :, None] * (x - x0)

        if buf is None:
            x = torch.randn((1, hb, ACT), generator=gen) * grid[0]
            for i in range(n - k):
                idx = torch.minimum(torch.full_like(start, i), start)
                x = torch.where((idx < start)[None, :, None], euler(x, idx), x)
        else:
            x = buf
        for r in range(k):
            x = euler(x, start + r)
        out.append(norm["action"].unnormalize(x[0, 0].clamp(-1, 1)).numpy())
        buf = torch.cat([x[:, 1:], torch.randn((1, 1, ACT), generator=gen) * grid[0]], dim=1)
    return np.stack(out)


def test_act_matches_the_written_out_algorithm(trained):
    rng = np.random.default_rng(0)
    observations = rng.uniform(-1, 1, (12, OBS + GOAL)).astype(np.float32)
    trained.reset(seed=3)
    acts = np.stack([trained.act(o) for o in observations])
    with torch.no_grad():
        np.testing.assert_allclose(acts, reference_stream(trained, observations, 3), atol=1e-6)


def test_memoized_grids_follow_the_sampler_and_resist_mutation(trained):
    obs = np.zeros(OBS + GOAL, np.float32)
    trained.reset(seed=1)
    before = [trained.act(obs) for _ in range(3)]
    trained.stream_sigmas().mul_(0)  # a caller's copy: the policy's own grid is untouched
    trained.reset(seed=1)
    np.testing.assert_array_equal(before, [trained.act(obs) for _ in range(3)])
    saved = trained.sampler
    try:
        trained.sampler = saved.replace(sigma_max=5.0)
        assert float(trained.stream_sigmas()[0]) == pytest.approx(5.0)
        trained.reset(seed=1)
        assert not np.allclose(before, [trained.act(obs) for _ in range(3)])
    finally:
        trained.sampler = saved
    assert "_cache" not in trained.__getstate__()
