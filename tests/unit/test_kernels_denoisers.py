"""Denoiser adapters against independently derived VP / flow oracles, and diffusers sampling equivalence."""

import pytest
import torch

import diffctl as dc
from diffctl.kernels import analytic, denoisers, schedules

GM = analytic.GaussianMixture([[-1.0, 0.5], [1.2, -0.4]], [0.3, 0.5], [0.4, 0.6])


def affine_posterior_mean(xt, alpha, beta):
    """E[x0 | xt] for xt = alpha x0 + beta eps under GM, derived directly in the affine convention."""
    a, b = alpha.reshape(-1, 1, 1), beta.reshape(-1, 1, 1)
    mu, std, w = GM.means.to(xt.dtype), GM.stds.to(xt.dtype), GM.weights.to(xt.dtype)
    var = a**2 * std**2 + b**2
    diff = xt[:, None] - a * mu
    logp = -0.5 * (diff**2 / var + var.log()).sum(-1) + w.log()
    r = torch.softmax(logp, -1)
    return (r[..., None] * (mu + a * std**2 / var * diff)).sum(1)


def vp_oracle(abar_all, prediction):
    def net(xt, t, cond):
        abar = abar_all.to(xt.dtype)[t.round().long()]
        a, b = abar.sqrt(), (1 - abar).sqrt()
        x0 = affine_posterior_mean(xt, a, b)
        eps = (xt - a[:, None] * x0) / b[:, None]
        return {"eps": eps, "x0": x0, "v": a[:, None] * eps - b[:, None] * x0}[prediction]

    return net


def flow_oracle(xt, t, cond):
    x0 = affine_posterior_mean(xt, 1 - t, t)
    return (xt - (1 - t)[:, None] * x0) / t[:, None] - x0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_vp_denoiser_matches_exact_denoiser(prediction):
    abar = schedules.vp_alphas_cumprod("squaredcos_cap_v2", 100)
    den = denoisers.VPDenoiser(vp_oracle(abar, prediction), abar, prediction=prediction)
    sig = schedules.vp_cosine(20, num_train_timesteps=100)[:-1]
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * (
        1 + sig[:, None]
    )
    torch.testing.assert_close(den(x, sig), GM.denoise(x, sig))
    torch.testing.assert_close(
        den.sigma_to_t(sig), schedules.vp_timesteps(20, 100).double(), atol=1e-9, rtol=0
    )


def test_vp_timestep_interpolates_in_log_sigma():
    abar = schedules.vp_alphas_cumprod("linear", 1000)
    den = denoisers.VPDenoiser(lambda x, t, c: x, abar)
    s = den.train_sigmas
    mid = (s[10].log() * 0.75 + s[11].log() * 0.25).exp()
    t = den.sigma_to_t(torch.stack([s[0] / 2, mid, s[-1] * 2]))
    torch.testing.assert_close(t, torch.tensor([0.0, 10.25, 999.0], dtype=torch.float64))
    den.round_timesteps = True
    assert den.sigma_to_t(mid[None]).item() == 10.0


def test_flow_denoiser_matches_exact_denoiser():
    den = denoisers.FlowDenoiser(flow_oracle)
    sig = schedules.flow(10)[:-1]
    x = torch.randn(10, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * (
        1 + sig[:, None]
    )
    torch.testing.assert_close(den(x, sig), GM.denoise(x, sig))


def test_edm_denoiser_preconditioning_and_consistency_boundary():
    sd = 0.5

    def net(x_in, c_noise, cond):
        sigma = (4 * c_noise).exp()[:, None]
        x = x_in * (sigma**2 + sd**2).sqrt()
        c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt()
        return (GM.denoise(x, sigma[:, 0]) - c_skip * x) / c_out

    den = denoisers.EDMDenoiser(net, sigma_data=sd)
    sig = schedules.karras(8)[:-1]
    x = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * sig[:, None]
    torch.testing.assert_close(den(x, sig), GM.denoise(x, sig))
    cm = denoisers.ConsistencyDenoiser(lambda x, c, cond: torch.randn_like(x), sd, sigma_min=0.002)
    torch.testing.assert_close(cm(x, 0.002), x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="sigma must be"):
        den(x, torch.ones(3))


def _oracle32(abar):
    net = vp_oracle(abar, "eps")
    return lambda x, t: net(
        x.double(), torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(len(x)), None
    )


def test_ddim_matches_diffusers_ddim_scheduler():
    diffusers = pytest.importorskip("diffusers")
    abar = schedules.vp_alphas_cumprod("squaredcos_cap_v2", 100)
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False, set_alpha_to_one=True
    )
    sched.set_timesteps(10)
    net = _oracle32(abar)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = x.clone()
    for t in sched.timesteps:
        ref = sched.step(net(ref, t), t, ref).prev_sample
    den = denoisers.VPDenoiser(vp_oracle(abar, "eps"), abar)
    sig = schedules.vp_cosine(10, num_train_timesteps=100)
    out = dc.kernels.sample(den, x * (1 + sig[0] ** 2) ** 0.5, sig, solver="ddim")
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)


def test_ddpm_100_matches_diffusers_ddpm_scheduler_noise_for_noise():
    diffusers = pytest.importorskip("diffusers")
    abar = schedules.vp_alphas_cumprod("squaredcos_cap_v2", 100)
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=False
    )
    sched.set_timesteps(100)
    net = _oracle32(abar)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    ref = x.clone()
    for t in sched.timesteps:
        ref = sched.step(net(ref, t), t, ref, generator=g).prev_sample
    den = denoisers.VPDenoiser(vp_oracle(abar, "eps"), abar)
    sig = schedules.vp_cosine(100, num_train_timesteps=100)
    out = dc.kernels.sample(
        den, x * (1 + sig[0] ** 2) ** 0.5, sig, solver="ddpm", generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
