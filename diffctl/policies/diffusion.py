"""DiffusionPolicy: action chunks sampled by a conditional denoiser (Diffusion Policy, BESO goal guidance).

The policy sees the last ``To`` observations, samples a chunk of ``H`` actions and executes ``Ta`` of them
starting at index ``To - 1`` (the step of the current observation). Two parameterizations share one network
signature: EDM (default; continuous sigma, any solver on a Karras grid) and the Diffusion Policy recipe (VP
eps prediction, 100 squaredcos timesteps, DDPM-100). The goal, when the task has one, enters as a
conditioning input that is dropped during training, so classifier-free guidance can weight it at inference.
"""

from __future__ import annotations

import collections
import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffctl.datasets.normalizer import Normalizer
from diffctl.kernels import schedules
from diffctl.kernels.denoisers import EDMDenoiser, VPDenoiser
from diffctl.kernels.samplers import sample
from diffctl.nets import build_backbone, build_encoder
from diffctl.policies.base import (
    Policy,
    SamplerConfig,
    agent_config,
    build_agent,
    eval_mode,
    param_device,
    read_agent_config,
    write_agent_dir,
)
from diffctl.policies.fused import FusedInputs, run_fused_chunk

VERSION = 1
PARAMETERIZATIONS = ("edm", "vp")
EDM_NOISE_SCALE = 250.0
"""EDM's ``c_noise = ln(sigma)/4`` spans about [-1.6, 1.1]; scaling spreads it over the range that the
sinusoidal embedding resolves, as integer VP timesteps (0..99) do."""


class ChunkDenoiserNet(nn.Module):
    """Observation encoder + backbone. ``condition`` builds the vector the backbone is conditioned on."""

    def __init__(self, encoder: nn.Module, backbone: nn.Module, goal_dim: int, noise_scale: float) -> None:
        super().__init__()
        self.encoder, self.backbone = encoder, backbone
        self.goal_dim, self.noise_scale = goal_dim, noise_scale

    def condition(
        self, obs: torch.Tensor, goal: torch.Tensor | None, keep: torch.Tensor | None
    ) -> torch.Tensor:
        """``obs (B, To, Do)``, ``goal (B, Dg)``, ``keep (B,)`` (1 = goal given) -> ``(B, Dc)``."""
        feats = self.encoder(obs)
        if not self.goal_dim:
            return feats
        if goal is None or keep is None:
            goal = feats.new_zeros(feats.shape[0], self.goal_dim)
            keep = feats.new_zeros(feats.shape[0])
        keep = keep.to(feats.dtype).reshape(-1, 1)
        return torch.cat([feats, goal * keep, keep], dim=-1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.backbone(x, c_noise * self.noise_scale, cond)


def split_batch(
    policy: DiffusionPolicy, batch: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, tuple, Any]:
    """Normalized actions (B, H, Da), raw conditioning ``(obs, goal, keep)`` (goal dropout drawn) and the
    ``(B, H, 1)`` padding mask of a raw batch."""
    for key in ("obs", "actions"):
        if key not in batch:
            raise ValueError(f"batch is missing key {key!r}; got keys {sorted(batch)}")
    device = next(policy.network.parameters()).device
    obs, goal_in_obs = policy._split_obs(batch["obs"].to(device, torch.float32))
    if obs.shape[1] != policy.n_obs_steps:
        raise ValueError(f"batch 'obs' has {obs.shape[1]} steps; expected n_obs_steps={policy.n_obs_steps}")
    actions = batch["actions"].to(device, torch.float32)
    if actions.shape[1:] != (policy.horizon, policy.action_dim):
        raise ValueError(
            f"batch 'actions' has shape {tuple(actions.shape)}; "
            f"expected (B, {policy.horizon}, {policy.action_dim})"
        )
    bsz = actions.shape[0]
    mask = batch.get("action_mask")
    mask = torch.ones(bsz, policy.horizon, device=device) if mask is None else mask.to(device, torch.float32)
    o = policy._normalizer("obs").normalize(obs)
    a = policy._normalizer("action").normalize(actions)
    g = keep = None
    if policy.goal_dim:
        goal = batch["goal"].to(device, torch.float32) if "goal" in batch else goal_in_obs
        if goal is None:
            raise ValueError("goal-conditioned policy needs batch key 'goal' (or goals inside 'obs')")
        g = policy._normalizer("goal").normalize(goal)
        keep = (torch.rand(bsz, device=device) >= policy.hparams["goal_dropout"]).float()
    return a, (o, g, keep), mask.unsqueeze(-1)


def history_tensor(policy: Any, obs_history: Any) -> torch.Tensor:
    """Validated raw history ``(B, To, D)``, float32 on the policy's device (numpy input checked in numpy:
    a quarter of the cost of the torch checks at batch 1)."""
    device = param_device(policy.network)
    if torch.is_tensor(obs_history):
        hist = obs_history.to(device, torch.float32)
    else:
        arr = np.asarray(obs_history, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[1] != policy.n_obs_steps:
            raise ValueError(
                f"obs_history must have shape (B, {policy.n_obs_steps}, D), got {tuple(arr.shape)}"
            )
        if not np.isfinite(arr).all():
            raise ValueError("obs_history contains NaN or inf")
        return torch.from_numpy(arr).to(device)
    if hist.ndim != 3 or hist.shape[1] != policy.n_obs_steps:
        raise ValueError(f"obs_history must have shape (B, {policy.n_obs_steps}, D), got {tuple(hist.shape)}")
    if not torch.isfinite(hist).all():
        raise ValueError("obs_history contains NaN or inf")
    return hist


def prefix_tensor(
    prefix: Any, batch: int, horizon: int, action_dim: int, device: torch.device
) -> torch.Tensor:
    """Actions (raw units) that fix chunk indices ``0..P-1``, checked to be ``(batch, P <= horizon, Da)``."""
    prefix = torch.as_tensor(prefix, dtype=torch.float32, device=device)
    if (
        prefix.ndim != 3
        or prefix.shape[0] != batch
        or prefix.shape[1] > horizon
        or prefix.shape[2] != action_dim
    ):
        raise ValueError(
            f"prefix must have shape ({batch}, P <= {horizon}, {action_dim}), got {tuple(prefix.shape)}"
        )
    return prefix


class DiffusionPolicy(Policy):
    """Diffusion policy over action chunks: ``fit_normalizers``, train ``network`` on ``loss``, ``act``."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        goal_dim: int = 0,
        horizon: int = 16,
        n_obs_steps: int = 2,
        n_action_steps: int = 8,
        backbone: str = "unet",
        backbone_kwargs: Mapping[str, Any] | None = None,
        encoder: str = "flatten",
        encoder_kwargs: Mapping[str, Any] | None = None,
        parameterization: str = "edm",
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        num_train_timesteps: int = 100,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction: str = "eps",
        clip_sample: float | None = 1.0,
        goal_dropout: float = 0.1,
        seed: int = 0,
        sampler: SamplerConfig | Mapping[str, Any] | None = None,
        normalizers: Mapping[str, Normalizer] | None = None,
    ) -> None:
        for name, value in (("obs_dim", obs_dim), ("action_dim", action_dim), ("horizon", horizon),
                            ("n_obs_steps", n_obs_steps), ("n_action_steps", n_action_steps)):  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DiffusionPolicy {name} must be a positive integer, got {value!r}")
        if goal_dim < 0:
            raise ValueError(f"DiffusionPolicy goal_dim must be >= 0, got {goal_dim}")
        if n_action_steps > horizon - n_obs_steps + 1:
            raise ValueError(
                f"n_action_steps={n_action_steps} must be <= horizon - n_obs_steps + 1 "
                f"= {horizon - n_obs_steps + 1}"
            )
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"unknown parameterization {parameterization!r}; expected one of {PARAMETERIZATIONS}"
            )
        if not 0.0 <= goal_dropout < 1.0:
            raise ValueError(f"goal_dropout must be in [0, 1), got {goal_dropout}")
        self.hparams: dict[str, Any] = {
            "obs_dim": obs_dim, "action_dim": action_dim, "goal_dim": goal_dim, "horizon": horizon,
            "n_obs_steps": n_obs_steps, "n_action_steps": n_action_steps, "backbone": backbone,
            "backbone_kwargs": dict(backbone_kwargs or {}), "encoder": encoder,
            "encoder_kwargs": dict(encoder_kwargs or {}), "parameterization": parameterization,
            "sigma_data": sigma_data, "p_mean": p_mean, "p_std": p_std,
            "num_train_timesteps": num_train_timesteps, "beta_schedule": beta_schedule,
            "prediction": prediction, "clip_sample": clip_sample,
            "goal_dropout": goal_dropout, "seed": seed,
        }  # fmt: skip
        self.obs_dim, self.action_dim, self.goal_dim = obs_dim, action_dim, goal_dim
        self.horizon, self.n_obs_steps, self.n_action_steps = horizon, n_obs_steps, n_action_steps
        self.parameterization = parameterization
        if isinstance(sampler, SamplerConfig):
            self.sampler = sampler
        else:
            self.sampler = SamplerConfig.from_dict(sampler or {})
        self.normalizers: dict[str, Normalizer] = dict(normalizers or {})
        self.alphas_cumprod = schedules.vp_alphas_cumprod(beta_schedule, num_train_timesteps).float()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            enc = build_encoder(encoder, obs_dim, n_obs_steps, **self.hparams["encoder_kwargs"])
            cond_dim = enc.out_dim + (goal_dim + 1 if goal_dim else 0)
            net = build_backbone(backbone, action_dim, horizon, cond_dim, **self.hparams["backbone_kwargs"])
        scale = EDM_NOISE_SCALE if parameterization == "edm" else 1.0
        self.network: nn.Module = ChunkDenoiserNet(enc, net, goal_dim, scale)
        self.seed(self.sampler.seed)
        self.reset()

    # ----- normalization -------------------------------------------------------------------------------
    def fit_normalizers(
        self, obs: Any, actions: Any, goal: Any = None, mode: str = "limits", obs_mode: str | None = None
    ) -> None:
        """Fit the obs / action (/ goal) normalizers from raw arrays (last axis = features); ``obs_mode``
        (default ``mode``) lets long-tailed observations such as locomotion velocities use ``gaussian``
        while actions keep the ``limits`` that sampling clamps to."""
        obs = np.asarray(obs, dtype=np.float64)[..., : self.obs_dim]
        self.normalizers = {
            "obs": Normalizer.fit(obs, obs_mode or mode, name="observations"),
            "action": Normalizer.fit(actions, mode, name="actions"),
        }
        if self.goal_dim:
            if goal is None:
                raise ValueError(
                    f"goal-conditioned policy (goal_dim={self.goal_dim}) needs goals to fit normalizers"
                )
            self.normalizers["goal"] = Normalizer.fit(goal, mode, name="goals")

    def _normalizer(self, key: str) -> Normalizer:
        if key not in self.normalizers:
            raise ValueError(
                f"DiffusionPolicy has no {key!r} normalizer; call fit_normalizers(...) before use"
            )
        return self.normalizers[key]

    def _split_obs(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(..., Do [+ Dg])`` -> state part and the goal of the last step (None when absent)."""
        full = self.obs_dim + self.goal_dim
        if obs.shape[-1] == self.obs_dim:
            return obs, None
        if self.goal_dim and obs.shape[-1] == full:
            return obs[..., : self.obs_dim], obs[..., -1, self.obs_dim :]
        expected = f"{self.obs_dim}" + (f" or {full} (with the goal)" if self.goal_dim else "")
        raise ValueError(f"observation has {obs.shape[-1]} features; expected {expected}")

    # ----- denoiser ------------------------------------------------------------------------------------
    def denoiser(self) -> nn.Module:
        """The network wrapped as a VE denoiser ``D(x, sigma, cond)``.

        VP models clamp their clean-sample estimate to ``clip_sample`` (diffusers' ``clip_sample``, on in the
        Diffusion Policy recipe): at the top of the squaredcos schedule (sigma ~ 2000) an eps-prediction's x0
        estimate is otherwise dominated by amplified eps error.
        """
        if self.parameterization == "edm":
            return EDMDenoiser(self.network, self.hparams["sigma_data"])
        hp = self.hparams
        return VPDenoiser(
            self.network, self.alphas_cumprod, prediction=hp["prediction"], clip_x0=hp["clip_sample"]
        )

    def _cached(self, key: tuple, build: Callable[[], Any]) -> Any:
        """``build()`` memoized under ``key`` (grids, denoiser wrappers: rebuilt per call they cost as much
        as a forward pass at batch 1). Keys hold every input of ``build``; the memo is not pickled."""
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def _denoiser(self) -> nn.Module:
        """``denoiser()`` memoized per network and ``sigma_min`` (the inputs it depends on)."""
        return self._cached(("denoiser", id(self.network), self.sampler.sigma_min), self.denoiser)

    def _condition_pair(
        self, o: torch.Tensor, goal: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(cond, uncond)`` for ``_guided`` from normalized obs and a raw goal, skipping the conditioning
        that the guidance scale does not use."""
        net, w = self.network, self.sampler.guidance_scale
        if not self.goal_dim or goal is None:
            return net.condition(o, None, None), None
        g = self._normalizer("goal").normalize(goal)
        if w == 0.0:
            uncond = net.condition(o, None, None)
            return uncond, uncond
        cond = net.condition(o, g, torch.ones(o.shape[0], device=o.device))
        return cond, (None if w == 1.0 else net.condition(o, None, None))

    def sigmas(self, sampler: SamplerConfig | None = None) -> torch.Tensor:
        """The descending sigma grid of the current sampler settings (float32, ends in 0)."""
        return self._grid(sampler).clone()

    def _grid(self, sampler: SamplerConfig | None = None) -> torch.Tensor:
        """``sigmas()`` without the copy: the memoized grid itself, the same object while the settings stay
        (fused graph keys are remembered per grid object); callers must not modify it."""
        cfg = sampler or self.sampler
        key = ("sigmas", cfg.schedule, cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho, cfg.spacing)
        return self._cached(key, lambda: self._build_sigmas(cfg))

    def _build_sigmas(self, cfg: SamplerConfig) -> torch.Tensor:
        kind = cfg.schedule
        if kind == "auto":
            kind = "karras" if self.parameterization == "edm" else "vp"
        if kind == "karras":
            grid = schedules.karras(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
        else:
            if self.parameterization != "vp":
                raise ValueError(
                    "sampler schedule 'vp' needs a VP-parameterized policy; use 'karras' or 'auto'"
                )
            grid = schedules.vp_grid(cfg.steps, self.alphas_cumprod.double(), spacing=cfg.spacing)
        return grid.float()

    # ----- training ------------------------------------------------------------------------------------
    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Denoising loss of a raw batch (``obs``, ``actions``, optional ``action_mask`` and ``goal``)."""
        a, (o, g, keep), m = split_batch(self, batch)
        bsz, device = a.shape[0], a.device
        cond = self.network.condition(o, g, keep)
        noise = torch.randn_like(a)
        if self.parameterization == "edm":
            sd = self.hparams["sigma_data"]
            sigma = (torch.randn(bsz, device=device) * self.hparams["p_std"] + self.hparams["p_mean"]).exp()
            s = sigma.reshape(-1, 1, 1)
            denoised = self.denoiser()(a + s * noise, sigma, cond)
            err = (s**2 + sd**2) / (s * sd) ** 2 * (denoised - a) ** 2
        else:
            abar_all = self.alphas_cumprod.to(device)
            t = torch.randint(0, abar_all.numel(), (bsz,), device=device)
            abar = abar_all[t].reshape(-1, 1, 1)
            x_t = abar.sqrt() * a + (1 - abar).sqrt() * noise
            out = self.network(x_t, t.float(), cond)
            pred = self.hparams["prediction"]
            target = {"eps": noise, "x0": a, "v": abar.sqrt() * noise - (1 - abar).sqrt() * a}[pred]
            err = (out - target) ** 2
        loss = (err * m).sum() / (m.sum() * self.action_dim).clamp_min(1.0)
        return loss, {"loss": float(loss.detach())}

    # ----- inference -----------------------------------------------------------------------------------
    def _guided(self, denoise: nn.Module, cond: torch.Tensor, uncond: torch.Tensor | None) -> Callable:
        """Classifier-free guidance on the goal, ``u + w (c - u)``; 1 NFE when w is 1 or there is no goal."""
        w = self.sampler.guidance_scale
        if uncond is None or w == 1.0:
            return functools.partial(denoise, cond=cond)
        if w == 0.0:
            return functools.partial(denoise, cond=uncond)
        both = torch.cat([cond, uncond])

        def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            c, u = denoise(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=both).chunk(2)
            return u + w * (c - u)

        return guided

    @torch.no_grad()
    def predict_chunk(
        self,
        obs_history: Any,
        *,
        noise: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample raw ``(B, H, Da)`` actions for raw histories ``(B, To, Do [+ Dg])`` (goal: last step).

        ``noise`` (B, H, Da) is the standard-normal start (drawn from the policy's generator otherwise);
        ``prefix`` (B, P, Da) raw actions are inpainted as the first P entries of the chunk;
        ``init`` (B, H, Da) raw actions warm-start sampling at ``sampler.warm_start``.
        """
        hist = history_tensor(self, obs_history)
        device = hist.device
        obs, goal = self._split_obs(hist)
        bsz = hist.shape[0]
        o = self._normalizer("obs").normalize(obs)
        with eval_mode(self.network):
            cond, uncond = self._condition_pair(o, goal)
            sigmas = self.sigmas().to(device)
            shape = (bsz, self.horizon, self.action_dim)
            noise = self.start_noise(shape, noise, device)
            act_norm = self._normalizer("action")
            warm = init is not None and self.sampler.warm_start > 0
            if warm:
                start = self.sampler.warm_start
                tail = sigmas[sigmas < start]
                sigmas = torch.cat([sigmas.new_tensor([start]), tail])
            if self.sampler.fused and prefix is None:
                return run_fused_chunk(self, hist, sigmas, noise, init if warm else None)[0]
            if warm:
                x = act_norm.normalize(init.to(device, torch.float32)) + start * noise
            else:
                x = noise * sigmas[0]
            mask = known = None
            if prefix is not None:
                prefix = prefix_tensor(prefix, bsz, self.horizon, self.action_dim, device)
                p = prefix.shape[1]
                known = torch.zeros(shape, device=device)
                known[:, :p] = act_norm.normalize(prefix)
                mask = torch.zeros(shape, dtype=torch.bool, device=device)
                mask[:, :p] = True
            denoise = self._guided(self._denoiser(), cond, uncond)
            x0 = sample(
                denoise, x, sigmas, solver=self.sampler.solver, generator=self._generator,
                mask=mask, known=known, **self.sampler.options,
            )  # fmt: skip
        return act_norm.unnormalize(x0.clamp(-1.0, 1.0))

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: empty history and action queue; ``seed`` reseeds the sampling generator."""
        self._obs: collections.deque[np.ndarray] = collections.deque(maxlen=self.n_obs_steps)
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._last_chunk: torch.Tensor | None = None
        self._inputs = FusedInputs()
        if seed is not None:
            self.seed(seed)

    def _check_obs(self, obs: Any) -> np.ndarray:
        arr = np.asarray(obs, dtype=np.float32)
        valid = {(self.obs_dim,), (self.obs_dim + self.goal_dim,)}
        if arr.shape not in valid:
            raise ValueError(
                f"act() got an observation of shape {arr.shape}; expected one of {sorted(valid)}"
            )
        if not np.isfinite(arr).all():
            raise ValueError(f"act() got a non-finite observation (NaN or inf): {arr.tolist()}")
        if self._obs and self._obs[-1].shape != arr.shape:
            raise ValueError(
                f"observation shape changed within an episode: {self._obs[-1].shape} -> {arr.shape}"
            )
        return arr

    def act(self, obs: Any) -> np.ndarray:
        """One observation -> one action; samples a new chunk when the queue of planned actions is empty."""
        arr = self._check_obs(obs)
        if not self._obs:
            self._obs.extend([arr] * self.n_obs_steps)
        else:
            self._obs.append(arr)
        if not self._queue:
            init = None
            if self._last_chunk is not None and self.sampler.warm_start > 0:
                shifted = self._last_chunk[:, self.n_action_steps :]
                pad = shifted[:, -1:].expand(-1, self.n_action_steps, -1)
                init = torch.cat([shifted, pad], dim=1)
            if self.sampler.fused and init is None:
                chunk = self._fused_act_chunk()
            else:
                chunk = self.predict_chunk(np.stack(self._obs)[None], init=init)
            self._last_chunk = chunk
            start = self.n_obs_steps - 1
            self._queue.extend(chunk.cpu().numpy()[0, start : start + self.n_action_steps])
        return self._queue.popleft().copy()

    def _fused_act_chunk(self) -> torch.Tensor:
        """``predict_chunk`` of the current history, cold, through the fused graph with preallocated inputs
        (``FusedInputs``): what ``act`` runs when ``sampler.fused`` is on."""
        hist, noise = self._inputs.chunk_inputs(self, self._obs, self._generator)
        return run_fused_chunk(self, hist, self._grid().to(hist.device), noise, None)[0]

    # ----- persistence ---------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this policy (the content of ``config.json``)."""
        return agent_config(self, VERSION)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_agent_dir(path, self.config(), self.network.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> DiffusionPolicy:
        """Rebuild from a directory written by ``save``; keyword overrides change ``SamplerConfig`` fields."""
        config, state = read_agent_config(path, cls.__name__, VERSION)
        sampler = SamplerConfig.from_dict(config["sampler"]).replace(**overrides)
        return build_agent(cls, path, config, state, sampler)
