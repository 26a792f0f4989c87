"""Export one denoising step of a diffusion policy to TorchScript or ONNX, with a parity check.

What is exported is ``DenoiserStep``: ``x0_hat = D(x, sigma, obs, goal)``, the policy's preconditioned
denoiser (EDM or VP adapter around the encoder + backbone) for one network evaluation, in the policy's
normalized spaces. Inputs: ``x`` (B, H, Da) noisy normalized actions, ``sigma`` (B,) VE noise levels,
``obs`` (B, To, Do) normalized observations and, for goal-conditioned policies, ``goal`` (B, Dg) normalized
goal (classifier-free guidance at scale 1). A sampler loop runs around it: the sidecar ``<out>.json`` holds
the sigma grid of the policy's sampler, the solver name and the normalizer statistics a runtime needs.
Both formats export EDM- and VP-parameterized policies, transformer backbones included (exported with
PyTorch's fused attention fast path off, since ONNX has no operator for it). A streaming policy exports its
per-entry step: ``x`` is the action buffer (B, Hb, Da) and ``sigma`` (B, Hb) holds each entry's noise level.
The sidecar's ``postprocess`` lists, in order, what a runtime does with the last ``x0_hat`` to get actions.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffctl.atomic import atomic_path, write_json

FORMATS = ("torchscript", "onnx")


class DenoiserStep(nn.Module):
    """One network evaluation of ``policy``: ``(x, sigma, obs[, goal]) -> x0_hat`` (normalized)."""

    def __init__(self, policy: Any) -> None:
        super().__init__()
        self.network = policy.network
        self.denoiser = policy.denoiser()
        self.goal_dim = int(getattr(policy, "goal_dim", 0))

    def forward(
        self, x: torch.Tensor, sigma: torch.Tensor, obs: torch.Tensor, goal: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.goal_dim and goal is not None:
            cond = self.network.condition(obs, goal, torch.ones_like(sigma))
        else:
            cond = self.network.condition(obs, None, None)
        return self.denoiser(x, sigma, cond=cond)


def is_streaming(policy: Any) -> bool:
    """Streaming policies denoise a buffer whose entries each carry their own noise level."""
    return hasattr(policy, "buffer_len") and hasattr(policy, "stream_sigmas")


def example_inputs(policy: Any, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the exported signature (sigmas spread over the sampler's grid)."""
    g = torch.Generator().manual_seed(seed)
    length = policy.buffer_len if is_streaming(policy) else policy.horizon
    x = torch.randn(batch, length, policy.action_dim, generator=g)
    sigma_shape = (batch, length) if is_streaming(policy) else (batch,)
    sigma = torch.exp(torch.empty(sigma_shape).uniform_(-5.0, 4.0, generator=g))
    obs = torch.rand(batch, policy.n_obs_steps, policy.obs_dim, generator=g) * 2 - 1
    scale = sigma.reshape(batch, -1, 1)
    inputs = (x * scale, sigma, obs)
    if getattr(policy, "goal_dim", 0):
        inputs += (torch.rand(batch, policy.goal_dim, generator=g) * 2 - 1,)
    return inputs


def input_names(policy: Any) -> list[str]:
    return ["x", "sigma", "obs"] + (["goal"] if getattr(policy, "goal_dim", 0) else [])


def export_denoiser(policy: Any, out: str | os.PathLike[str], fmt: str) -> dict[str, Any]:
    """Write ``DenoiserStep(policy)`` to ``out`` (atomically) plus the sidecar ``out.json``; returns it."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid formats: {FORMATS}")
    for attr in ("network", "denoiser", "horizon", "action_dim", "n_obs_steps", "obs_dim"):
        if not hasattr(policy, attr):
            raise ValueError(
                f"{type(policy).__name__} has no {attr!r}: only diffusion policies can be exported"
            )
    cameras = getattr(getattr(policy, "config", None), "image_shapes", None)
    if cameras:
        raise ValueError(
            f"export takes state-observation policies; this one sees cameras {sorted(cameras)} "
            "(not supported yet)"
        )
    final = Path(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    module = DenoiserStep(policy).eval()
    inputs = example_inputs(policy, batch=2)
    names = input_names(policy)
    with atomic_path(final) as tmp, torch.no_grad(), _attention_fast_path_off():
        if fmt == "torchscript":
            torch.jit.trace(module, inputs, check_trace=False).save(str(tmp))
        else:
            _export_onnx(module, inputs, names, tmp)
    streaming = is_streaming(policy)
    sigmas = policy.stream_sigmas() if streaming else policy.sigmas() if hasattr(policy, "sigmas") else None
    meta = {
        "format": fmt, "file": final.name, "class": type(policy).__name__, "inputs": names,
        "shapes": {n: ["B", *t.shape[1:]] for n, t in zip(names, inputs, strict=True)},
        "output": f"x0_hat (B, {'Hb' if streaming else 'H'}, Da), normalized actions",
        "parameterization": getattr(policy, "parameterization", None),
        "sampler": policy.sampler.to_dict() if hasattr(policy, "sampler") else None,
        "sigmas": None if sigmas is None else sigmas.tolist(),
        "normalizers": {k: n.to_dict() for k, n in getattr(policy, "normalizers", {}).items()},
        "n_action_start": 0 if streaming else policy.n_obs_steps - 1,
        "n_action_steps": getattr(policy, "n_action_steps", None),
        "postprocess": postprocess_steps(policy),
    }  # fmt: skip
    if streaming:
        meta["steps_per_tick"] = policy.steps_per_tick
    write_json(final.with_name(final.name + ".json"), meta)
    return meta


def postprocess_steps(policy: Any) -> list[str]:
    """What a runtime does, in order, with the final ``x0_hat`` to get the actions the policy would act."""
    start = 0 if is_streaming(policy) else policy.n_obs_steps - 1
    steps = ["clamp x0_hat to [-1, 1]", "unnormalize with normalizers.action: (x - offset) / scale"]
    if is_streaming(policy):
        steps.append("act entry 0 of the buffer, then shift the buffer by one entry")
    else:
        count = getattr(policy, "n_action_steps", None)
        steps.append(f"act actions[:, {start}:{start} + {count}] in order (n_action_start, n_action_steps)")
    return steps


@contextlib.contextmanager
def _attention_fast_path_off() -> Iterator[None]:
    """Trace ``nn.MultiheadAttention`` as plain ops: its fused fast path has no ONNX operator."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _export_onnx(module: nn.Module, inputs: tuple, names: list[str], path: Path) -> None:
    dynamic = {n: {0: "batch"} for n in names} | {"x0_hat": {0: "batch"}}
    torch.onnx.export(
        module, inputs, str(path), input_names=names, output_names=["x0_hat"], dynamic_axes=dynamic,
        opset_version=17, dynamo=False,
    )  # fmt: skip


def parity(policy: Any, path: str | os.PathLike[str], fmt: str, batch: int = 3, trials: int = 4) -> dict:
    """Max absolute and relative difference of the exported step against eager PyTorch on random inputs.

    ONNX runs on onnxruntime's CPU provider; ``ImportError`` when onnxruntime is not installed.
    """
    module = DenoiserStep(policy).eval()
    run = _runner(path, fmt)
    max_abs = max_rel = 0.0
    for trial in range(trials):
        inputs = example_inputs(policy, batch=batch, seed=100 + trial)
        with torch.no_grad():
            ref = module(*inputs).numpy()
        got = run(inputs)
        if not (np.isfinite(got).all() and np.isfinite(ref).all()):
            max_abs = max_rel = float("inf")  # a NaN never passes a tolerance (max(0.0, nan) would be 0.0)
            break
        diff = np.abs(got - ref)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / (np.abs(ref) + 1e-3)).max()))
    return {"format": fmt, "max_abs_err": max_abs, "max_rel_err": max_rel, "trials": trials, "batch": batch}


def _runner(path: str | os.PathLike[str], fmt: str) -> Any:
    if not Path(path).is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path))

        def run_ts(inputs: tuple) -> np.ndarray:
            with torch.no_grad():
                return loaded(*inputs).numpy()

        return run_ts
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(inputs: tuple) -> np.ndarray:
            feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
            return session.run(None, feed)[0]

        return run_onnx
    raise ValueError(f"unknown export format {fmt!r}; valid formats: {FORMATS}")
