"""Image components: backbones, the diffusion classifier on an exact mixture, input checks, data, metrics."""

import numpy as np
import pytest
import torch

from diffctl.datasets.images import ImageDataset, write_image_store
from diffctl.images import ImageDiffusion
from diffctl.images.classifier import classifier_sigmas, diffusion_classify
from diffctl.images.metrics import frechet_distance
from diffctl.kernels.analytic import GaussianMixture
from diffctl.kernels.denoisers import EDMDenoiser
from diffctl.kernels.guidance import ClassifierFreeGuidance
from diffctl.kernels.samplers import sample
from diffctl.kernels.schedules import karras
from diffctl.nets import DiT2d, UNet2d


def perturb(net, scale=0.05):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net


@pytest.mark.parametrize(
    "net", [UNet2d(1, 8, 3, base=16, mults=(1, 2), attn_res=(4,)), DiT2d(3, 8, 3, dim=32, depth=1, heads=2)]
)
def test_image_backbones_work_with_every_kernel(net):
    net = perturb(net)
    c = net.channels
    denoiser = EDMDenoiser(net, 0.5)
    labels = torch.tensor([0, 1, 2, 1])
    guided = ClassifierFreeGuidance(denoiser, labels, torch.full_like(labels, 3), 2.0)
    x = torch.randn(4, c, 8, 8) * 80
    with torch.no_grad():
        for solver in ("euler", "heun", "dpmpp_2m", "dpmpp_2m_sde"):
            out = sample(
                guided,
                x,
                karras(4, 0.002, 80.0, 7.0),
                solver=solver,
                generator=torch.Generator().manual_seed(0),
            )
            assert out.shape == x.shape and torch.isfinite(out).all()
        a = net(x[:2] / 80, torch.zeros(2), labels[:2])
        b = net(x[:2] / 80, torch.zeros(2), torch.tensor([2, 2]))
    assert (a - b).abs().max() > 0  # the label matters
    with pytest.raises(ValueError, match="integer labels"):
        net(x, torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        net(x[0], torch.zeros(4), labels)


def test_diffusion_classifier_is_exact_on_a_mixture_with_known_class_denoisers():
    """Class c is one Gaussian; its exact denoiser is known. Well separated: every sample is classified right,
    with and without early elimination; elimination costs fewer evaluations."""
    means = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=torch.float64)
    std = torch.full((1, 2), 0.3, dtype=torch.float64)
    classes = [GaussianMixture(m[None], std, torch.ones(1, dtype=torch.float64)) for m in means]

    def denoise(x, sigma, labels):
        out = torch.empty_like(x)
        for c, gm in enumerate(classes):
            rows = labels == c
            if rows.any():
                out[rows] = gm.denoise(x[rows], sigma[rows])
        return out

    g = torch.Generator().manual_seed(0)
    truth = torch.arange(4).repeat(25)
    x = means[truth] + 0.3 * torch.randn(100, 2, generator=g, dtype=torch.float64)
    sigmas = classifier_sigmas(16).double()
    full = diffusion_classify(denoise, x, 4, sigmas, generator=torch.Generator().manual_seed(1))
    pruned = diffusion_classify(
        denoise, x, 4, sigmas, first_round=4, keep=2, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(full.labels, truth) and torch.equal(pruned.labels, truth)
    assert full.nfe_per_image == 4 * 16 and pruned.nfe_per_image == 4 * 4 + 2 * 12


def tiny_model(**kw):
    return ImageDiffusion(
        channels=1,
        image_size=8,
        num_classes=3,
        backbone_kwargs={"base": 16, "mults": [1, 2], "attn_res": [4]},
        **kw,
    )


def test_wrong_image_shapes_dtypes_and_labels_are_clear_errors():
    model = tiny_model()
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"shape \(n, 1, 8, 8\)"):
        model.invert(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="dtype"):
        model.classify(torch.zeros(2, 1, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="NaN"):
        model.invert(torch.full((2, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        model.sample(2, labels=[0, 3])
    with pytest.raises(ValueError, match="integers"):
        model.sample(2, labels=[0.5, 1.0])
    with pytest.raises(ValueError, match=r"one integer or 2"):
        model.invert(x, labels=[0, 1, 2])
    with pytest.raises(ValueError, match="unknown inversion method"):
        model.invert(x, method="exact")
    unconditional = ImageDiffusion(channels=1, image_size=8, backbone_kwargs={"base": 16, "mults": [1, 2]})
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.sample(2, labels=1)
    with pytest.raises(ValueError, match=r"ImageDiffusion\.channels"):
        ImageDiffusion(channels=2, image_size=8)


def test_model_api_round_trips_and_save_load(tmp_path):
    model = tiny_model()
    perturb(model.network, 0.1)
    g = torch.Generator().manual_seed(0)
    stats = {}
    x = model.sample(6, labels=[0, 1, 2, 0, 1, 2], guidance=2.0, steps=4, generator=g, stats=stats)
    assert x.shape == (6, 1, 8, 8) and x.abs().max() <= 1 and stats["nfe"] == 2 * 4  # 4 steps, guided: x2
    inv = model.invert(x, labels=[0, 1, 2, 0, 1, 2], method="edict", steps=10)
    assert (model.reconstruct(inv) - x).abs().max() <= 1e-4
    assert model.classify(x).shape == (6,)
    path = model.save(tmp_path / "gen")
    from diffctl.agents import load

    again = load(path, steps=4)
    g = torch.Generator().manual_seed(0)
    y = again.sample(6, labels=[0, 1, 2, 0, 1, 2], guidance=2.0, generator=g)
    torch.testing.assert_close(x, y)


def test_image_store_split_and_dataset(tmp_path):
    images = np.arange(10 * 3 * 4 * 4, dtype=np.int64).reshape(10, 3, 4, 4).astype(np.uint8)
    store = write_image_store(
        tmp_path / "s.zarr", images, np.arange(10) % 2, ["a", "b"], dataset="t", recipe="test"
    )
    train, held = ImageDataset(store), ImageDataset(store, "held_out")
    assert len(train) == 8 and len(held) == 2 and train.num_classes == 2
    batch = held.get_batch([1])
    np.testing.assert_allclose(batch["images"].numpy(), images[9:] / 127.5 - 1, atol=1e-6)
    assert store.verify()["checked"]
    with pytest.raises(ValueError, match="uint8"):
        write_image_store(
            tmp_path / "t.zarr", images.astype(np.float32), np.zeros(10), [], dataset="t", recipe="x"
        )


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 3))
    b = rng.normal(1, 2, (20000, 3))
    # |mu|^2 = 3; tr(S_a + S_b - 2 sqrt(S_a S_b)) = 3 * (1 + 4 - 2 * 2) = 3
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_classifier_levels_spread_over_the_range_in_every_prefix():
    """The first round of early elimination must see high and low noise, not only the lowest levels."""
    levels = classifier_sigmas(24)
    median = levels.median()
    first = levels[:6]
    assert (first < median).any() and (first > median).any()
    assert torch.allclose(levels.sort().values, classifier_sigmas(24).sort().values)
    assert len(set(levels.tolist())) == 24
