"""Guidance combinators on class-conditional exact mixture denoisers."""

import pytest
import torch

import diffctl as dc
from diffctl.kernels import analytic, guidance, schedules

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]], dtype=torch.float64)
FULL = analytic.GaussianMixture(MEANS, 0.4)
PARTS = [analytic.GaussianMixture(MEANS[k : k + 1], 0.4) for k in range(3)]


class Model:
    """model(x, sigma, cond): cond = class index, -1 for unconditional; counts calls and rows."""

    def __init__(self):
        self.calls, self.rows = 0, 0

    def __call__(self, x, sigma, cond):
        self.calls += 1
        self.rows += x.shape[0]
        out = FULL.denoise(x, sigma)
        for k, gm in enumerate(PARTS):
            sel = cond == k
            if sel.any():
                out[sel] = gm.denoise(x[sel], sigma[sel])
        return out


def _x(n=64, seed=0):
    return 80.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cfg_scale_one_is_conditional_and_scale_s_extrapolates_in_one_call():
    m = Model()
    cond = torch.tensor([0, 1, 2, 1])
    x, s = _x(4), torch.full((4,), 3.0, dtype=torch.float64)
    c, u = m(x, s, cond), m(x, s, torch.full((4,), -1))
    m.calls = 0
    torch.testing.assert_close(guidance.ClassifierFreeGuidance(m, cond, torch.tensor([-1]), 1.0)(x, s), c)
    out = guidance.ClassifierFreeGuidance(m, cond, torch.tensor([-1]), 3.0)(x, s)
    torch.testing.assert_close(out, u + 3.0 * (c - u))
    assert m.calls == 2 and m.rows == 4 + 4 + 4 + 8


def test_cfg_samples_land_in_the_conditioned_mode():
    m = Model()
    cond = torch.full((64,), 2)
    den = guidance.ClassifierFreeGuidance(m, cond, torch.tensor([-1]), 2.0)
    out = dc.kernels.sample(den, _x(), schedules.karras(20), solver="dpmpp_2m")
    assert (FULL.assign(out) == 2).all()


def test_adaptive_guidance_saves_nfe_and_stays_close_to_full_guidance():
    sig = schedules.karras(20)
    cond = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(1))
    full = dc.kernels.sample(
        guidance.ClassifierFreeGuidance(Model(), cond, torch.tensor([-1]), 2.0), _x(), sig
    )
    frac = guidance.AdaptiveGuidance(Model(), cond, torch.tensor([-1]), 2.0, sigmas=sig, stop_fraction=0.5)
    out_frac = dc.kernels.sample(frac, _x(), sig)
    assert frac.nfe_saved == pytest.approx(10.0)
    m = Model()
    cos = guidance.AdaptiveGuidance(m, cond, torch.tensor([-1]), 2.0, cos_threshold=0.99)
    out_cos = dc.kernels.sample(cos, _x(), sig)
    assert 5 < cos.nfe_saved < 20 and m.calls == 20
    assert m.rows == 2 * 20 * 64 - round(cos.nfe_saved * 64)
    for out, tol in ((out_frac, 0.1), (out_cos, 0.02)):
        assert (FULL.assign(out) == cond).float().mean() > 0.95
        assert (out - full).norm(dim=1).median() < tol
    with pytest.raises(ValueError, match="sigmas"):
        guidance.AdaptiveGuidance(m, cond, None, 2.0, stop_fraction=0.5)


def test_gradient_guidance_moves_samples_towards_the_goal():
    goal = torch.tensor([2.0, 0.0], dtype=torch.float64)
    value = lambda x0, s: -((x0 - goal) ** 2).sum(-1)
    sig = schedules.karras(20)
    plain = dc.kernels.sample(FULL.denoise, _x(), sig)
    for through in (False, True):
        den = guidance.GradientGuidance(FULL.denoise, value, 0.5, through_denoiser=through, sigma_min=0.01)
        out = dc.kernels.sample(den, _x(), sig)
        assert (FULL.assign(out) == 1).float().mean() > (FULL.assign(plain) == 1).float().mean() + 0.3
        assert not out.requires_grad


def test_prefix_weights_and_prefix_guidance():
    w = guidance.prefix_weights(16, 3, 12)
    assert w.shape == (16,) and (w[:3] == 1).all() and (w[12:] == 0).all()
    assert (w[3:12].diff() <= 0).all() and 0 < w[4] < 1
    with pytest.raises(ValueError, match="frozen"):
        guidance.prefix_weights(4, 5)
    gm = analytic.GaussianMixture(torch.zeros(1, 8, 2), 1.0)
    prefix = torch.full((1, 8, 2), 1.5, dtype=torch.float64)
    den = guidance.prefix_guidance(gm.denoise, prefix, guidance.prefix_weights(8, 2, 5), scale=2.0)
    x = 80 * torch.randn(256, 8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = dc.kernels.sample(den, x, schedules.karras(15))
    head, tail = out[:, :2].mean(), out[:, 6:].mean()
    assert head > 0.7 and abs(tail) < 0.2


def test_inpaint_x0_replaces_prediction():
    known = torch.ones(4, 2)
    mask = torch.tensor([[True, False]])
    den = guidance.inpaint_x0(lambda x, s: torch.zeros_like(x), mask, known)
    out = den(torch.zeros(4, 2), torch.ones(4))
    assert (out[:, 0] == 1).all() and (out[:, 1] == 0).all()
