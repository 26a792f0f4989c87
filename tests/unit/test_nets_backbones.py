"""Backbones: shapes, conditioning actually matters, they can fit a tiny regression, bad inputs fail."""

import pytest
import torch

from diffctl.nets import build_backbone, build_encoder

SMALL = {
    "unet": {"down_dims": (16, 32), "embed_dim": 16},
    "dit": {"dim": 32, "depth": 2, "heads": 2},
    "mlp": {"hidden": 64, "depth": 2, "embed_dim": 16},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_shapes_and_conditioning(name):
    torch.manual_seed(0)
    net = build_backbone(name, action_dim=3, horizon=8, cond_dim=5, **SMALL[name])
    for p in net.parameters():  # DiT starts as identity (zero gates); perturb so cond must flow through
        p.data += 0.05 * torch.randn_like(p)
    x, t = torch.randn(4, 8, 3), torch.randn(4)
    c1, c2 = torch.randn(4, 5), torch.randn(4, 5)
    y1 = net(x, t, c1)
    assert y1.shape == (4, 8, 3)
    assert not torch.allclose(y1, net(x, t, c2))
    assert not torch.allclose(y1, net(x, t + 1.0, c1))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_fits_a_conditional_target(name):
    torch.manual_seed(0)
    net = build_backbone(name, action_dim=2, horizon=8, cond_dim=3, **SMALL[name])
    x, t, c = torch.randn(32, 8, 2), torch.randn(32), torch.randn(32, 3)
    target = torch.tanh(c[:, :2]).unsqueeze(1).expand(-1, 8, -1) + 0.1 * x
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = (net(x, t, c) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_bad_inputs():
    net = build_backbone("unet", 2, 8, 4, down_dims=(8, 16), embed_dim=8)
    with pytest.raises(ValueError, match="cond"):
        net(torch.randn(2, 8, 2), torch.randn(2), torch.randn(2, 3))
    with pytest.raises(ValueError, match="c_noise"):
        net(torch.randn(2, 8, 2), torch.randn(3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="divisible"):
        build_backbone("unet", 2, 6, 4, down_dims=(8, 16, 32))
    with pytest.raises(ValueError, match="valid"):
        build_backbone("lstm", 2, 8, 4)


def test_encoders():
    obs = torch.randn(5, 2, 4)
    assert build_encoder("flatten", 4, 2)(obs).shape == (5, 8)
    enc = build_encoder("mlp", 4, 2, out=16)
    assert enc(obs).shape == (5, enc.out_dim) == (5, 32)
    with pytest.raises(ValueError, match="shape"):
        enc(torch.randn(5, 3, 4))


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(5, 1, 2), (3, 2, 1), (1, 1, 0)])
def test_gemm_conv_matches_conv1d(kernel, stride, padding):
    from diffctl.nets.unet1d import GemmConv1d

    torch.manual_seed(0)
    gemm = GemmConv1d(6, 10, kernel, stride=stride, padding=padding)
    ref = torch.nn.Conv1d(6, 10, kernel, stride=stride, padding=padding)
    ref.load_state_dict(gemm.state_dict())
    x = torch.randn(3, 6, 16, requires_grad=True)
    torch.testing.assert_close(gemm(x), ref(x), atol=1e-5, rtol=1e-5)
    (g1,) = torch.autograd.grad(gemm(x).square().sum(), x)
    (g2,) = torch.autograd.grad(ref(x).square().sum(), x)
    torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4)
