"""Export of one denoising step: TorchScript and ONNX match eager PyTorch; the CLI runs the parity check."""

import itertools
import json

import numpy as np
import pytest
import torch

from diffctl.cli import main
from diffctl.deploy.export import DenoiserStep, example_inputs, export_denoiser, parity
from diffctl.policies import DiffusionPolicy


def tiny_policy(parameterization: str = "edm", backbone: str = "mlp") -> DiffusionPolicy:
    kwargs = {"hidden": 32, "depth": 1, "embed_dim": 16} if backbone == "mlp" else {"down_dims": [16, 32]}
    policy = DiffusionPolicy(4, 2, goal_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4, backbone=backbone,
                             backbone_kwargs=kwargs, parameterization=parameterization)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    policy.fit_normalizers(torch.rand(50, 4, generator=g), torch.rand(50, 2, generator=g),
                           torch.rand(50, 2, generator=g))  # fmt: skip
    return policy


@pytest.mark.parametrize("parameterization", ["edm", "vp"])
def test_torchscript_parity(tmp_path, parameterization):
    policy = tiny_policy(parameterization)
    meta = export_denoiser(policy, tmp_path / "step.pt", "torchscript")
    assert meta["inputs"] == ["x", "sigma", "obs", "goal"]
    assert json.loads((tmp_path / "step.pt.json").read_text())["sigmas"] == policy.sigmas().tolist()
    report = parity(policy, tmp_path / "step.pt", "torchscript")
    assert report["max_abs_err"] < 1e-5
    # the exported step is what the sampler evaluates: same as the policy's own denoiser on its conditioning
    x, sigma, obs, goal = example_inputs(policy, batch=2)
    cond = policy.network.condition(obs, goal, torch.ones(2))
    with torch.no_grad():
        np.testing.assert_allclose(
            DenoiserStep(policy)(x, sigma, obs, goal).numpy(), policy.denoiser()(x, sigma, cond=cond).numpy()
        )


@pytest.mark.parametrize("parameterization", ["edm", "vp"])
def test_onnx_parity(tmp_path, parameterization):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    policy = tiny_policy(parameterization, backbone="unet")
    export_denoiser(policy, tmp_path / "step.onnx", "onnx")
    report = parity(policy, tmp_path / "step.onnx", "onnx", batch=5)
    assert report["max_abs_err"] < 1e-4


def test_export_errors(tmp_path):
    with pytest.raises(ValueError, match="format"):
        export_denoiser(tiny_policy(), tmp_path / "x", "tflite")
    with pytest.raises(FileNotFoundError):
        parity(tiny_policy(), tmp_path / "missing.pt", "torchscript")


def test_cli_export(tmp_path, capsys):
    ckpt = tiny_policy().save(tmp_path / "agent")
    out = tmp_path / "out" / "step.pt"
    assert main(["export", str(ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    assert out.is_file() and "parity check passed" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx", "--out", str(out)]) == 1


def test_parity_fails_a_model_whose_outputs_are_not_finite(tmp_path):
    policy = tiny_policy()
    with torch.no_grad():
        next(policy.network.parameters()).fill_(float("nan"))
    export_denoiser(policy, tmp_path / "step.pt", "torchscript")
    report = parity(policy, tmp_path / "step.pt", "torchscript")
    assert report["max_abs_err"] == float("inf") and report["max_rel_err"] == float("inf")


def test_cli_export_to_a_directory_is_one_clear_error(tmp_path, capsys):
    from diffctl.cli import main

    path = tiny_policy().save(tmp_path / "agent")
    (tmp_path / "out").mkdir()
    assert main(["export", str(path), "--format", "torchscript", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    wanted = f"--out {tmp_path / 'out'} is a directory; expected the path of the file to write"
    assert err == f"diffctl export: error: {wanted}"


def perturbed(policy, scale=0.2):
    """Random weights everywhere (zero-initialized gates would make any export match trivially)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.network.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return policy


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_transformer_and_streaming_policies_export(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from diffctl.policies.streaming import StreamingDiffusionPolicy

    dit_net = {"dim": 16, "depth": 1, "heads": 2, "mlp_ratio": 2.0, "dropout": 0.0}
    dit = DiffusionPolicy(4, 2, horizon=8, n_action_steps=4, backbone="dit", backbone_kwargs=dit_net)
    windows = {"horizon": 8, "n_obs_steps": 2, "n_action_steps": 4}
    stream = StreamingDiffusionPolicy(4, 2, **windows, backbone_kwargs={"hidden": 32, "depth": 1})
    for name, policy in [("dit", perturbed(dit)), ("stream", perturbed(stream))]:
        out = tmp_path / f"{name}.{fmt}"
        meta = export_denoiser(policy, out, fmt)
        assert parity(policy, out, fmt, batch=3)["max_abs_err"] < 1e-4
        assert meta["postprocess"][0] == "clamp x0_hat to [-1, 1]"
    assert meta["shapes"]["x"] == ["B", stream.buffer_len, 2]
    assert meta["shapes"]["sigma"] == ["B", stream.buffer_len]
    assert meta["sigmas"] == stream.stream_sigmas().tolist() and meta["n_action_start"] == 0


def test_a_runtime_following_the_sidecar_reproduces_the_policy(tmp_path):
    """Euler over the sidecar's sigmas on the exported step, then its postprocess steps == predict_chunk."""
    policy = perturbed(tiny_policy(), scale=0.6)
    policy.sampler = policy.sampler.replace(solver="euler", steps=6)
    out = tmp_path / "step.pt"
    meta = export_denoiser(policy, out, "torchscript")
    step = torch.jit.load(str(out))
    g = torch.Generator().manual_seed(3)
    hist = torch.rand(2, 2, 6, generator=g) * 4 - 2  # raw obs (4) + goal (2), far outside the data range
    noise = torch.randn(2, 8, 2, generator=g)
    norms = {k: np.asarray(v["scale"]) for k, v in meta["normalizers"].items()}
    offsets = {k: np.asarray(v["offset"]) for k, v in meta["normalizers"].items()}
    obs = torch.as_tensor(hist[..., :4].numpy() * norms["obs"] + offsets["obs"], dtype=torch.float32)
    goal = torch.as_tensor(hist[:, -1, 4:].numpy() * norms["goal"] + offsets["goal"], dtype=torch.float32)
    sigmas = meta["sigmas"]
    x = noise * sigmas[0]
    with torch.no_grad():
        for s, s_next in itertools.pairwise(sigmas):
            x0 = step(x, torch.full((2,), s), obs, goal)
            x = x + (x - x0) / s * (s_next - s)
    clamp, unnormalize = meta["postprocess"][:2]
    assert clamp == "clamp x0_hat to [-1, 1]" and "(x - offset) / scale" in unnormalize
    actions = (x.clamp(-1, 1).numpy() - offsets["action"]) / norms["action"]
    expected = policy.predict_chunk(hist, noise=noise).numpy()
    assert np.abs(expected).max() > 0 and np.abs(x.numpy()).max() > 1  # the clamp matters here
    np.testing.assert_allclose(actions, expected, atol=1e-5)
