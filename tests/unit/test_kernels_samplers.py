"""Samplers driven by the exact mixture denoiser: convergence order, distribution, constraints, errors."""

import itertools
import math

import pytest
import torch

import diffctl as dc
from diffctl.kernels import analytic, schedules

pytest.importorskip("scipy")

DETERMINISTIC = ["euler", "ddim", "heun", "dpmpp_2m", "dpmpp_3m"]
ALL = sorted(dc.kernels.SOLVERS)


def mixture_2d() -> analytic.GaussianMixture:
    return analytic.GaussianMixture([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.5]], [0.4, 0.5, 0.45], [0.5, 0.3, 0.2])


@pytest.fixture(scope="module")
def ode_case():
    gm = mixture_2d()
    x = 80.0 * torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return gm, x, gm.ode_solve(x, 80.0, 0.002, rtol=1e-10, atol=1e-10)


def _err(gm, x, ref, solver, n):
    sig = schedules.karras(n)[:-1]
    out, info = dc.kernels.sample(gm.denoise, x, sig, solver=solver, return_info=True)
    return (out - ref).pow(2).sum(1).mean().sqrt().item(), info["nfe"]


@pytest.mark.parametrize(
    ("solver", "steps", "lo", "hi"),
    [
        ("euler", (64, 128, 256), 0.85, 1.3),
        ("heun", (64, 128, 256), 1.7, 2.5),
        ("dpmpp_2m", (64, 128, 256), 1.6, 2.5),
        ("dpmpp_3m", (64, 128, 256), 2.5, 3.6),
    ],
)
def test_convergence_order_against_reference_ode(ode_case, solver, steps, lo, hi):
    gm, x, ref = ode_case
    errs = [_err(gm, x, ref, solver, n)[0] for n in steps]
    orders = [math.log2(a / b) for a, b in itertools.pairwise(errs)]
    assert errs[-1] < errs[0]
    assert all(lo <= o <= hi for o in orders), (solver, errs, orders)


def test_higher_order_beats_euler_at_equal_nfe(ode_case):
    gm, x, ref = ode_case
    euler50 = _err(gm, x, ref, "euler", 50)[0]
    assert _err(gm, x, ref, "dpmpp_2m", 20)[0] < euler50
    assert _err(gm, x, ref, "heun", 25)[0] < euler50
    assert _err(gm, x, ref, "dpmpp_3m", 20)[0] < _err(gm, x, ref, "dpmpp_2m", 20)[0]


def test_ddim_eta0_and_sde_eta0_match_their_deterministic_twins(ode_case):
    gm, x, _ = ode_case
    sig = schedules.karras(12)
    a = dc.kernels.sample(gm.denoise, x, sig, solver="ddim", eta=0.0)
    torch.testing.assert_close(a, dc.kernels.sample(gm.denoise, x, sig, solver="euler"), rtol=0, atol=0)
    b = dc.kernels.sample(gm.denoise, x, sig, solver="dpmpp_2m_sde", eta=0.0)
    torch.testing.assert_close(
        b, dc.kernels.sample(gm.denoise, x, sig, solver="dpmpp_2m"), rtol=1e-12, atol=1e-12
    )


def _stats_error(gm, out, true, gen):
    mean_err = (out.mean(0) - gm.mean()).norm().item()
    cov = torch.cov(out.reshape(out.shape[0], -1).T)
    cov_err = (cov - gm.cov()).norm().item()
    w = torch.bincount(gm.assign(out), minlength=gm.num_components).double() / out.shape[0]
    w_err = (w - gm.weights).abs().max().item()
    sw = analytic.sliced_wasserstein(out, true, 64, gen).item()
    return mean_err, cov_err, w_err, sw


@pytest.mark.parametrize("solver", [s for s in ALL if s != "consistency"])
def test_distribution_converges_with_nfe(solver):
    gm = mixture_2d()
    n = 3000
    gen = torch.Generator().manual_seed(1)
    true = gm.sample(n, gen)
    base = _stats_error(gm, gm.sample(n, gen), true, torch.Generator().manual_seed(2))
    results = {}
    for steps in (3, 100):
        g = torch.Generator().manual_seed(3)
        sig = schedules.karras(steps)
        x = sig[0] * torch.randn(n, 2, generator=g, dtype=torch.float64)
        out = dc.kernels.sample(gm.denoise, x, sig, solver=solver, generator=g)
        results[steps] = _stats_error(gm, out, true, torch.Generator().manual_seed(2))
    mean_err, cov_err, w_err, sw = results[100]
    assert mean_err < 0.1 and cov_err < 0.2 and w_err < 0.04, results
    assert sw < 2.5 * base[3] + 0.02, (results, base)
    assert results[100][3] < results[3][3]


def test_consistency_sampler_with_exact_consistency_function():
    mu, c = torch.tensor([0.7, -0.3]), 0.6
    gm = analytic.GaussianMixture(mu[None], c)

    def f(x, sigma):
        s = sigma.reshape(-1, 1)
        return mu + c / torch.sqrt(c**2 + s**2) * (x - mu)

    g = torch.Generator().manual_seed(0)
    true = gm.sample(4000, g)
    for steps in (1, 3):
        sig = schedules.karras(steps)
        x = sig[0] * torch.randn(4000, 2, generator=g, dtype=torch.float64)
        out = dc.kernels.sample(f, x, sig, solver="consistency", generator=g)
        assert (out.mean(0) - mu).abs().max() < 0.05
        assert (out.std(0) - c).abs().max() < 0.03
        assert analytic.sliced_wasserstein(out, true, 64, g) < 0.05


def test_heun_nfe_and_partial_start():
    gm = mixture_2d()
    sig = schedules.karras(10)
    x = sig[0] * torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, info = dc.kernels.sample(gm.denoise, x, sig, solver="heun", return_info=True)
    assert info["nfe"] == 19
    _, info = dc.kernels.sample(gm.denoise, x, sig[:-1], solver="heun", return_info=True)
    assert info["nfe"] == 18
    # warm start: begin at sigma 0.5 from noised true samples and land on the data distribution
    g = torch.Generator().manual_seed(4)
    x0 = gm.sample(2000, g)
    part = schedules.karras(8, sigma_max=0.5)
    out = dc.kernels.sample(gm.denoise, x0 + 0.5 * torch.randn(x0.shape, generator=g, dtype=x0.dtype), part)
    assert (out.mean(0) - gm.mean()).norm() < 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("solver", ALL)
def test_dtypes_seed_determinism_and_callback(solver, dtype):
    gm = analytic.GaussianMixture(torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0)), 0.3)
    sig = schedules.karras(6)
    seen = []

    def run(seed, cb=None):
        g = torch.Generator().manual_seed(seed)
        x = sig[0] * torch.randn(5, 4, 2, generator=g, dtype=dtype)
        return dc.kernels.sample(gm.denoise, x, sig, solver=solver, generator=g, callback=cb)

    a = run(7, lambda i, x, s, x0: seen.append((i, s, x.dtype, x0.shape)))
    b = run(7)
    assert a.dtype == dtype and a.shape == (5, 4, 2) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [s[0] for s in seen] == list(range(6))
    assert seen[0][1] == pytest.approx(80.0) and all(s[2] == dtype for s in seen)
    if solver in ("ddpm", "dpmpp_2m_sde", "consistency"):
        assert not torch.equal(a, run(8))


@pytest.mark.parametrize("solver", ALL)
def test_inpainting_keeps_known_entries_exactly(solver):
    gm = analytic.GaussianMixture(torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(1)), 0.3)
    g = torch.Generator().manual_seed(0)
    sig = schedules.karras(8)
    x = sig[0] * torch.randn(4, 6, 2, generator=g)
    known = torch.randn(4, 6, 2, generator=g)
    mask = torch.zeros(1, 6, 1, dtype=torch.bool)
    mask[:, :2] = True
    out = dc.kernels.sample(gm.denoise, x, sig, solver=solver, generator=g, mask=mask, known=known)
    assert torch.equal(out[:, :2], known[:, :2])
    assert not torch.equal(out[:, 2:], known[:, 2:])
    soft = mask.float()
    out2 = dc.kernels.sample(
        gm.denoise, x, sig, solver=solver, mask=soft, known=known, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(out2[:, :2], known[:, :2])


def test_inpainting_conditions_the_free_entries():
    # two perfectly correlated modes: fixing the first coordinate picks the mode of the second
    gm = analytic.GaussianMixture([[-2.0, -2.0], [2.0, 2.0]], 0.2)
    g = torch.Generator().manual_seed(0)
    sig = schedules.karras(30)
    x = sig[0] * torch.randn(200, 2, generator=g, dtype=torch.float64)
    known = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False]])
    out = dc.kernels.sample(gm.denoise, x, sig, solver="ddpm", generator=g, mask=mask, known=known)
    assert (out[:, 1] > 0).float().mean() > 0.97


def _den(x, sigma):
    return torch.zeros_like(x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver": "rk4"}, "expected one of"),
        ({"sigmas": torch.tensor([1.0, 2.0, 0.0])}, "descending"),
        ({"sigmas": torch.tensor([1.0, 1.0, 0.0])}, "descending"),
        ({"sigmas": torch.tensor([1.0, -0.5])}, "non-negative"),
        ({"sigmas": torch.tensor([1.0])}, "at least 2"),
        ({"sigmas": torch.ones(2, 2)}, "1-D"),
        ({"sigmas": torch.tensor([float("nan"), 0.0])}, "finite"),
        ({"mask": torch.ones(3, 3, dtype=torch.bool), "known": torch.zeros(4, 2)}, "mask"),
        ({"mask": torch.ones(4, 2, dtype=torch.bool)}, "together"),
        ({"solver": "euler", "order": 3}, "unknown options"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = {"sigmas": schedules.karras(4), "solver": "euler"} | kwargs
    with pytest.raises(ValueError, match=match):
        dc.kernels.sample(_den, torch.zeros(4, 2), **args)


def test_unknown_solver_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        dc.kernels.sample(_den, torch.zeros(1, 2), schedules.karras(2), solver="nope")
    assert all(s in str(err.value) for s in dc.kernels.SOLVERS)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_denoiser_output_names_step_and_sigma(bad):
    sig = schedules.karras(5)

    def den(x, sigma):
        return torch.full_like(x, bad) if sigma[0] < 1.0 else torch.zeros_like(x)

    step = next(i for i, s in enumerate(sig.tolist()) if s < 1.0)
    with pytest.raises(ValueError, match=rf"step {step} \(sigma=") as err:
        dc.kernels.sample(den, torch.zeros(3, 2), sig, solver="dpmpp_2m")
    assert "NaN or inf" in str(err.value)
