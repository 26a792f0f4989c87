"""Noise grids: shapes, endpoints, validation, and agreement with diffusers' DDIM/DDPM timesteps."""

import math

import pytest
import torch

from diffctl.kernels import schedules


@pytest.mark.parametrize("n", [1, 2, 10, 37])
def test_karras_grid(n):
    sig = schedules.karras(n, sigma_min=0.002, sigma_max=80.0, rho=7.0)
    assert sig.shape == (n + 1,) and sig[-1] == 0 and sig[0] == pytest.approx(80.0)
    assert (sig[1:] < sig[:-1]).all()
    if n > 1:
        assert sig[-2] == pytest.approx(0.002)
        steps = sig[:-1] ** (1 / 7)
        torch.testing.assert_close(steps.diff(), steps.diff()[:1].expand(n - 1))


def test_flow_and_custom_grids():
    sig = schedules.flow(4, t_max=0.8)
    t = sig / (1 + sig)
    torch.testing.assert_close(t, torch.tensor([0.8, 0.6, 0.4, 0.2, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        schedules.custom([3.0, 1.0]), torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    )
    assert schedules.custom([2.0, 0.0]).tolist() == [2.0, 0.0]


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda: schedules.karras(0), "n"),
        (lambda: schedules.karras(5, sigma_min=1.0, sigma_max=0.5), "sigma_min"),
        (lambda: schedules.vp_cosine(5, spacing="middle"), "spacing"),
        (lambda: schedules.vp_alphas_cumprod("sigmoid"), "kind"),
        (lambda: schedules.vp_linear(2000), "exceed"),
        (lambda: schedules.custom([1.0, 2.0]), "descending"),
        (lambda: schedules.custom([1.0, -1.0]), "non-negative"),
        (lambda: schedules.custom([]), "empty"),
        (lambda: schedules.flow(3, t_max=1.0), "t_max"),
    ],
)
def test_bad_grid_arguments(fn, match):
    with pytest.raises(ValueError, match=match):
        fn()


def test_vp_grid_is_sigma_of_alphas_cumprod():
    abar = schedules.vp_alphas_cumprod("squaredcos_cap_v2", 100)
    sig = schedules.vp_cosine(100, num_train_timesteps=100)
    assert sig.shape == (101,) and sig[-1] == 0
    torch.testing.assert_close(sig[:-1].flip(0), ((1 - abar) / abar).sqrt())
    assert abar[-1] > 0 and math.isfinite(sig[0])


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize(
    ("kind", "T"), [("linear", 1000), ("squaredcos_cap_v2", 100), ("scaled_linear", 1000)]
)
def test_vp_schedules_match_diffusers(spacing, kind, T):
    diffusers = pytest.importorskip("diffusers")
    for n in (1, 3, 7, 10, 16, 50, T):
        for cls in (diffusers.DDIMScheduler, diffusers.DDPMScheduler):
            kw = {"beta_start": 0.00085, "beta_end": 0.012} if kind == "scaled_linear" else {}
            ref = cls(num_train_timesteps=T, beta_schedule=kind, timestep_spacing=spacing, **kw)
            ref.set_timesteps(n)
            ts = schedules.vp_timesteps(n, T, spacing)
            assert ts.tolist() == ref.timesteps.tolist(), (cls.__name__, n)
            abar = schedules.vp_alphas_cumprod(kind, T, **kw)
            torch.testing.assert_close(abar, ref.alphas_cumprod.double(), rtol=2e-6, atol=1e-7)
            ac = ref.alphas_cumprod.double()[ref.timesteps]
            grid = schedules.vp_grid(n, abar, spacing)
            # diffusers keeps alphas_cumprod in float32, so compare in abar = 1 / (1 + sigma^2)
            torch.testing.assert_close(1 / (1 + grid[:-1] ** 2), ac, rtol=2e-6, atol=1e-10)
