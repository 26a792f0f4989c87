"""DDIM and EDICT inversion: EDICT is exact on a random network, DDIM converges on the exact mixture."""

import pytest
import torch

from diffctl.kernels import schedules
from diffctl.kernels.analytic import GaussianMixture
from diffctl.kernels.denoisers import EDMDenoiser
from diffctl.kernels.inversion import ddim_invert, ddim_sample, edict_invert, edict_sample, inversion_grid


def random_denoiser(dtype=torch.float64):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)).to(dtype)
    return EDMDenoiser(lambda x, c, cond: net(x) * (1 + c[:, None]), 0.5)


@pytest.mark.parametrize("steps", [10, 50])
def test_edict_inverts_a_random_network_exactly(steps):
    denoise = random_denoiser()
    x = torch.rand(32, 3, dtype=torch.float64) * 2 - 1
    sigmas = schedules.karras(steps, 0.002, 80.0, 7.0).double()
    with torch.no_grad():
        lx, ly = edict_invert(denoise, x, sigmas, net_dtype=torch.float64)
        rx, ry = edict_sample(denoise, lx, ly, sigmas, net_dtype=torch.float64)
    assert lx.abs().max() > 10  # really at the top of the grid, not the identity
    assert (rx - x).abs().max() < 1e-10 and (ry - x).abs().max() < 1e-10


def test_edict_with_a_float32_network_reconstructs_to_1e4():
    denoise = random_denoiser(torch.float32)
    x = torch.rand(32, 3) * 2 - 1
    sigmas = schedules.karras(50, 0.002, 80.0, 7.0)
    with torch.no_grad():
        rx, _ = edict_sample(denoise, *edict_invert(denoise, x, sigmas), sigmas)
    assert (rx.float() - x).abs().max() <= 1e-4


def test_ddim_inversion_of_the_exact_mixture_round_trips_as_steps_grow():
    gm = GaussianMixture(
        torch.tensor([[1.0, 0.5], [-1.0, -0.5]], dtype=torch.float64),
        torch.tensor([[0.3, 0.2], [0.2, 0.3]], dtype=torch.float64),
        torch.tensor([0.5, 0.5], dtype=torch.float64),
    )
    x = gm.sample(64, torch.Generator().manual_seed(1)).double()
    errors = []
    for steps in (10, 50, 200):
        sigmas = schedules.karras(steps, 0.002, 80.0, 7.0).double()
        errors.append(
            float((ddim_sample(gm.denoise, ddim_invert(gm.denoise, x, sigmas), sigmas) - x).abs().max())
        )
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1 < errors[0]


def test_inversion_grids_are_checked():
    assert inversion_grid(torch.tensor([2.0, 1.0, 0.0])).tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match="descending"):
        inversion_grid(torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="mixing weight"):
        edict_invert(lambda x, s: x, torch.zeros(1, 2), torch.tensor([2.0, 1.0]), p=0.2)
