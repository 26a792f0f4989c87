"""Fused ticks: a policy's whole sampling of a chunk (or one streaming tick) as one frozen TorchScript graph.

At batch 1 on a CPU a small MLP's forward pass is largely Python dispatch, and the work around it
(normalization, conditioning, solver bookkeeping, EDM scalings) costs about as much again. With
``SamplerConfig.fused`` on, a policy traces the path from raw observation history and start noise to raw
actions once per input shape, sigma grid and weight version, freezes it and runs the graph instead.

Only deterministic paths are fused: the sigma grid is fixed when tracing, the start noise is an input
(drawn from the policy's generator as in the eager path), and a solver that draws noise of its own on that
grid (ddpm, SDE solvers, chained consistency) is refused with a ValueError. Each graph is checked against
the eager path on its example inputs when it is built.

TorchScript is deprecated in recent PyTorch, but it removes the per-op Python dispatch at batch 1 without
the C++ toolchain that ``torch.compile``'s CPU backend needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import numpy as np
import torch
from torch import nn

from diffctl.core.modules import eval_mode
from diffctl.core.sampler import refuse_fused
from diffctl.kernels.samplers import sample

__all__ = ["FusedInputs", "cached_graph", "refuse_fused", "run_fused_chunk", "trace_frozen"]

PARITY_ATOL = 1e-4
MAX_GRAPHS = 8

ChunkFn = Callable[..., torch.Tensor]
_version = attrgetter("_version")


class _Traceable(nn.Module):
    """Wrap a tensor function so ``torch.jit.trace`` can record it; ``owner`` holds its parameters."""

    def __init__(self, fn: Callable[..., Any], owner: nn.Module) -> None:
        super().__init__()
        self.owner, self.fn = owner, fn

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.fn(*inputs)


def trace_frozen(
    fn: Callable[..., Any], owner: nn.Module, inputs: Sequence[torch.Tensor], what: str
) -> Callable[..., Any]:
    """Trace ``fn(*inputs)`` (tensors only, no data-dependent control flow), freeze it and check it
    reproduces ``fn`` on ``inputs`` to ``PARITY_ATOL``; ``what`` names the path in errors."""
    module = _Traceable(fn, owner)
    module.training = False
    with torch.no_grad(), eval_mode(owner), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        ref = module(*inputs)
        graph = torch.jit.freeze(torch.jit.trace(module, tuple(inputs), check_trace=False))
        got = graph(*inputs)
    refs = ref if isinstance(ref, tuple) else (ref,)
    gots = got if isinstance(got, tuple) else (got,)
    for r, g in zip(refs, gots, strict=True):
        err = float((r - g).abs().max()) if r.numel() else 0.0
        if not err <= PARITY_ATOL:
            raise RuntimeError(f"fused {what} differs from the eager path by {err:.3g} (> {PARITY_ATOL})")
    return graph


def check_deterministic(
    denoise: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor, solver: str, options: dict
) -> int:
    """Run the solver once eagerly; ValueError when it draws noise on this grid. Returns its NFE."""
    gen = torch.Generator(device=x.device).manual_seed(0)
    before = gen.get_state()
    with torch.no_grad():
        _, info = sample(denoise, x, sigmas, solver=solver, generator=gen, return_info=True, **options)
    if not torch.equal(before, gen.get_state()):
        raise ValueError(
            f"fused sampling needs a deterministic path: solver {solver!r} with options {options} draws "
            f"noise on a {len(sigmas) - 1}-step grid; use a deterministic solver (euler or ddim with eta 0, "
            f"heun, dpmpp_2m, dpmpp_3m, 1-step consistency) or set fused=False"
        )
    return int(info["nfe"])


def constant_sigma(denoise: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``denoise`` whose noise level is recorded as a constant when traced. A fused graph's sigma grid is
    fixed (it is part of the graph's key), so freezing then folds everything that depends on sigma alone
    (the noise-level embedding MLP, the preconditioning scalings) out of the per-tick work: about a fifth of
    a small MLP's forward pass at batch 1."""

    def call(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoise(x, torch.tensor(sigma.tolist(), dtype=sigma.dtype, device=sigma.device))

    return call


def history_parts(hist: Any) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
    """A validated history as graph inputs: ``((), (hist,))`` for a tensor, the sorted keys and their
    tensors for a dict (the state history and each camera's frames)."""
    if isinstance(hist, dict):
        names = tuple(sorted(hist))
        return names, tuple(hist[k] for k in names)
    return (), (hist,)


def fused_chunk_sampler(policy: Any, sigmas: torch.Tensor, hist: Any, warm: bool) -> tuple[ChunkFn, int]:
    """A frozen graph ``(*history parts, noise[, init]) -> raw chunk`` of ``policy``'s sampler on ``sigmas``
    (cold: ``x = sigmas[0] noise``; warm: ``x = normalize(init) + sigmas[0] noise``) for inputs shaped like
    ``hist`` (``history_parts``), and its NFE per call."""
    cfg = policy.sampler
    solver, options = cfg.solver, dict(cfg.options)
    names, parts = history_parts(hist)
    device = parts[0].device
    sig = sigmas.detach().to(device, torch.float32)
    s0 = float(sig[0])
    norm = policy.normalizer("action")
    shape = (parts[0].shape[0], policy.horizon, policy.action_dim)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        nfe = check_deterministic(policy.conditioned_denoiser(hist), noise * s0, sig, solver, options)

    def chunk(*args: torch.Tensor) -> torch.Tensor:
        n = len(parts)
        h = dict(zip(names, args[:n], strict=True)) if names else args[0]
        z, init = args[n], (args[n + 1] if len(args) > n + 1 else None)
        x = z * s0 if init is None else norm.normalize(init) + s0 * z
        denoise = constant_sigma(policy.conditioned_denoiser(h))
        x0 = sample(denoise, x, sig, solver=solver, check_finite=False, **options)
        return norm.unnormalize(x0.clamp(-1.0, 1.0))

    inputs = (*parts, noise) + ((norm.unnormalize(noise.clamp(-1.0, 1.0)),) if warm else ())
    return trace_frozen(chunk, policy.network, inputs, f"{type(policy).__name__} chunk sampler"), nfe


def _count_reload(module: nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: count the reloads of a network (``assign=True`` loads put new parameter
    objects in place while the old ones keep their ``_version``)."""
    module.__dict__["_diffctl_reloads"] = module.__dict__.get("_diffctl_reloads", 0) + 1


def _reloads(net: nn.Module) -> int:
    """How often ``net.load_state_dict`` ran since it was first watched (the hook is registered on the
    network itself, once: no process-wide hook)."""
    if "_diffctl_reloads" not in net.__dict__:
        net.__dict__["_diffctl_reloads"] = 0
        net.register_load_state_dict_post_hook(_count_reload)
    return net.__dict__["_diffctl_reloads"]


def network_params(policy: Any) -> list[nn.Parameter]:
    """``list(policy.network.parameters())`` memoized until the network loads a state dict (a walk over the
    modules costs as much as the rest of a fused tick's bookkeeping at batch 1). Parameters
    replaced any other way (assigning a new submodule, a submodule's own ``load_state_dict``) are not seen:
    call ``clear_fused_cache(policy)`` after such surgery."""
    cache = policy.__dict__.setdefault("_cache", {})
    net = policy.network
    reloads = _reloads(net)
    memo = cache.get(("params",))
    if memo is None or memo[0] is not net or memo[1] != reloads:
        params = list(net.parameters())
        same = memo is not None and memo[0] is net and len(params) == len(memo[2])
        if same and all(a is b for a, b in zip(params, memo[2], strict=True)):
            params = memo[2]
        memo = cache[("params",)] = (net, reloads, params)
    return memo[2]


def clear_fused_cache(policy: Any) -> None:
    """Forget ``policy``'s fused graphs and parameter memo (after replacing parameters by hand)."""
    policy.__dict__.pop("_cache", None)


def network_device(policy: Any) -> torch.device:
    """Device of ``policy.network`` (CPU without parameters), from the memo of ``network_params``."""
    params = network_params(policy)
    return params[0].device if params else torch.device("cpu")


def cached_graph(policy: Any, key: tuple, build: Callable[[], Any]) -> Any:
    """``build()`` memoized under ``key`` for the current network and weights of ``policy``: newer weights
    replace the graph instead of piling up, and past ``MAX_GRAPHS`` keys (a server seeing many batch sizes)
    the least recently built goes. In-place updates (optimizer steps, ``load_state_dict``) bump a
    parameter's ``_version``, and replaced parameters change ``network_params``: either marks a frozen
    graph's weights stale."""
    cache = policy.__dict__.setdefault("_cache", {})
    params = network_params(policy)
    key = ("fused", *key)
    hit = cache.get(key)
    if hit is not None and hit[0] is params and list(map(_version, params)) == hit[1]:
        return hit[2]
    cache.pop(key, None)
    fused = [k for k in cache if k[0] == "fused"]
    for old in fused[: max(0, len(fused) - MAX_GRAPHS + 1)]:
        del cache[old]
    graph = build()
    cache[key] = (params, list(map(_version, params)), graph)
    return graph


def grid_key(policy: Any, sigmas: torch.Tensor) -> tuple[float, ...]:
    """``sigmas`` as a tuple of floats (part of a graph's key), remembered for the last grid object while it
    is unmodified: control loops pass the same memoized grid every tick."""
    cache = policy.__dict__.setdefault("_cache", {})
    last = cache.get(("grid_key",))
    if last is not None and last[0] is sigmas and last[1] == sigmas._version:
        return last[2]
    key = tuple(sigmas.tolist())
    cache[("grid_key",)] = (sigmas, sigmas._version, key)
    return key


def run_fused_chunk(
    policy: Any, hist: Any, sigmas: torch.Tensor, noise: torch.Tensor, init: torch.Tensor | None
) -> tuple[torch.Tensor, int]:
    """Raw chunks of ``policy`` from a validated history (a tensor, or a dict with camera frames) through
    its fused sampler graph, and the NFE."""
    cfg = policy.sampler
    options = tuple(sorted(cfg.options.items())) if cfg.options else ()
    names, parts = history_parts(hist)
    device = parts[0].device
    shapes = tuple((name, tuple(p.shape)) for name, p in zip(names or ("",), parts, strict=True))
    key = (shapes, device, grid_key(policy, sigmas), cfg.solver, options, cfg.guidance_scale)
    key += (init is not None,)
    graph, nfe = cached_graph(
        policy, key, lambda: fused_chunk_sampler(policy, sigmas, hist, init is not None)
    )
    inputs = (*parts, noise) if init is None else (*parts, noise, init.to(device, torch.float32))
    with torch.no_grad():
        return graph(*inputs), nfe


class FusedInputs:
    """Preallocated batch-1 inputs of a control stream's fused graphs.

    Stacking and re-checking the history and allocating noise on every tick is a visible share of a
    sub-millisecond fused tick at batch 1. Here the history frames (already checked by ``act``) are copied
    into one fixed tensor and standard-normal noise is drawn in place (``normal_`` draws exactly what
    ``torch.randn`` does from the same generator state), so the values equal the general path's. The
    tensors are reused: a graph's outputs never alias them.
    """

    def __init__(self) -> None:
        self._hist = torch.empty(0)
        self._noise: dict[tuple[int, ...], torch.Tensor] = {}

    def history(self, frames: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
        """``(1, len(frames), D)`` float32 history of equally shaped ``(D,)`` frames on ``device``."""
        shape = (1, len(frames), frames[0].shape[0])
        if tuple(self._hist.shape) != shape:
            self._hist = torch.empty(shape)
        view = self._hist.numpy()
        for i, frame in enumerate(frames):
            view[0, i] = frame
        return self._hist.to(device)

    def chunk_inputs(
        self, policy: Any, frames: Sequence[np.ndarray], generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """History and start noise ``(1, H, Da)`` of a fused chunk of ``policy``, on its network's device."""
        device = network_device(policy)
        shape = (1, policy.horizon, policy.action_dim)
        return self.history(frames, device), self.noise(shape, generator, device)

    def noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> torch.Tensor:
        """Standard-normal ``shape`` drawn on the CPU from ``generator`` (None: torch's global RNG)."""
        z = self._noise.get(shape)
        if z is None:
            z = self._noise[shape] = torch.empty(shape)
        return z.normal_(generator=generator).to(device)
