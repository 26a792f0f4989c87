"""DiffusionPolicy: action chunks sampled by a conditional denoiser (Diffusion Policy, BESO goal guidance).

The policy sees the last ``To`` observations, samples a chunk of ``H`` actions and executes ``Ta`` of them
starting at index ``To - 1`` (the step of the current observation). Two parameterizations share one network
signature: EDM (default; continuous sigma, any solver on a Karras grid) and the Diffusion Policy recipe (VP
eps prediction, 100 squaredcos timesteps, DDPM-100). The goal, when the task has one, enters as a
conditioning input that is dropped during training, so classifier-free guidance can weight it at inference.
Policies with cameras (``image_shapes``) encode each frame of the history with ``nets.vision`` and take
histories and observations as dicts: ``observations`` (the state vector) plus one uint8 frame per camera.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from diffctl.core.config import Configurable
from diffctl.core.observations import as_image_observation, as_observation
from diffctl.datasets.normalizer import Normalizer
from diffctl.kernels import schedules
from diffctl.kernels.denoisers import EDMDenoiser, VPDenoiser
from diffctl.kernels.guidance import ClassifierFreeGuidance
from diffctl.kernels.losses import edm_loss, vp_loss
from diffctl.kernels.samplers import sample
from diffctl.nets import build_backbone, build_encoder
from diffctl.nets.vision import ImageObsEncoder, image_encoder_defaults
from diffctl.policies.base import (
    ChunkConfig,
    Policy,
    SamplerConfig,
    agent_config,
    build_agent,
    eval_mode,
    param_device,
    read_agent_config,
    write_agent_dir,
)
from diffctl.policies.fused import run_fused_chunk
from diffctl.policies.runner import ChunkRunner

VERSION = 1
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
        self,
        obs: torch.Tensor,
        goal: torch.Tensor | None,
        keep: torch.Tensor | None,
        images: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``obs (B, To, Do)``, ``goal (B, Dg)``, ``keep (B,)`` (1 = goal given), ``images {camera: (B, To,
        H, W, C) uint8}`` for image encoders -> ``(B, Dc)``."""
        feats = self.encoder(obs) if images is None else self.encoder(obs, images)
        if not self.goal_dim:
            return feats
        if goal is None or keep is None:
            goal = feats.new_zeros(feats.shape[0], self.goal_dim)
            keep = feats.new_zeros(feats.shape[0])
        keep = keep.to(feats.dtype).reshape(-1, 1)
        return torch.cat([feats, goal * keep, keep], dim=-1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.backbone(x, c_noise * self.noise_scale, cond)


def batch_images(
    policy: Any, batch: Mapping[str, Any], device: torch.device
) -> dict[str, torch.Tensor] | None:
    """The batch's camera frames ``{key: (B, To, H, W, C) uint8}`` on ``device`` (None without cameras)."""
    if not policy.config.image_shapes:
        return None
    images = batch.get("images")
    if not isinstance(images, Mapping):
        raise ValueError(
            f"an image policy needs batch key 'images' (cameras {sorted(policy.config.image_shapes)}); "
            "set task.image_keys"
        )
    return {k: v.to(device) for k, v in images.items()}


def split_batch(
    policy: DiffusionPolicy, batch: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, tuple, Any]:
    """Normalized actions (B, H, Da), raw conditioning ``(obs, goal, keep, images)`` (goal dropout drawn;
    images None without cameras) and the ``(B, H, 1)`` padding mask of a raw batch."""
    for key in ("obs", "actions"):
        if key not in batch:
            raise ValueError(f"batch is missing key {key!r}; got keys {sorted(batch)}")
    device = next(policy.network.parameters()).device
    obs, goal_in_obs = policy.split_obs(batch["obs"].to(device, torch.float32))
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
    o = policy.normalizer("obs").normalize(obs)
    a = policy.normalizer("action").normalize(actions)
    g = keep = None
    if policy.goal_dim:
        goal = batch["goal"].to(device, torch.float32) if "goal" in batch else goal_in_obs
        if goal is None:
            raise ValueError("goal-conditioned policy needs batch key 'goal' (or goals inside 'obs')")
        g = policy.normalizer("goal").normalize(goal)
        keep = (torch.rand(bsz, device=device) >= policy.config.goal_dropout).float()
    return a, (o, g, keep, batch_images(policy, batch, device)), mask.unsqueeze(-1)


def history_tensor(policy: Any, obs_history: Any) -> Any:
    """Validated raw history ``(B, To, D)``, float32 on the policy's device (numpy input checked in numpy:
    a quarter of the cost of the torch checks at batch 1). Policies with cameras take and return a dict:
    ``observations`` (that history) and each camera's ``(B, To, H, W, C)`` uint8 frames."""
    if getattr(policy.config, "image_shapes", None):
        return image_history(policy, obs_history)
    return state_history(policy, obs_history)


def state_history(policy: Any, obs_history: Any) -> torch.Tensor:
    """The state part of ``history_tensor``: ``(B, To, D)`` float32, finite, on the policy's device."""
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


def image_history(policy: Any, obs_history: Any) -> dict[str, torch.Tensor]:
    """``history_tensor`` of a policy with cameras: the state history and each camera's frames, checked."""
    shapes = policy.config.image_shapes
    if not isinstance(obs_history, Mapping) or "observations" not in obs_history:
        raise ValueError(
            f"this policy sees cameras {sorted(shapes)}: obs_history must be a dict with 'observations' "
            f"(B, {policy.n_obs_steps}, D) and uint8 frames (B, {policy.n_obs_steps}, H, W, C) per camera"
        )
    device = param_device(policy.network)
    out = {"observations": state_history(policy, obs_history["observations"])}
    bsz = out["observations"].shape[0]
    for key, shape in shapes.items():
        if key not in obs_history:
            raise ValueError(f"obs_history is missing camera {key!r}; got keys {sorted(obs_history)}")
        frames = torch.as_tensor(obs_history[key])
        expected = (bsz, policy.n_obs_steps, *shape)
        if frames.dtype != torch.uint8 or tuple(frames.shape) != expected:
            raise ValueError(
                f"camera {key!r} history must be uint8 of shape {expected}, got {frames.dtype} "
                f"{tuple(frames.shape)}"
            )
        out[key] = frames.to(device)
    return out


def split_history(policy: Any, hist: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """A validated history as its state tensor and its cameras' frames (None without cameras)."""
    if isinstance(hist, Mapping):
        return hist["observations"], {k: v for k, v in hist.items() if k != "observations"}
    return hist, None


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


def prefix_mask(
    policy: Any, prefix: Any, shape: tuple[int, ...], device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The sampler's ``mask`` and normalized ``known`` values that inpaint raw ``prefix`` actions as a chunk's
    first entries (both None without a prefix)."""
    if prefix is None:
        return None, None
    prefix = prefix_tensor(prefix, shape[0], policy.horizon, policy.action_dim, device)
    known = torch.zeros(shape, device=device)
    known[:, : prefix.shape[1]] = policy.normalizer("action").normalize(prefix)
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    mask[:, : prefix.shape[1]] = True
    return mask, known


def build_observation_encoder(cfg: Any) -> nn.Module:
    """The camera encoder when the config has ``image_shapes``, else the state ``encoder``."""
    if cfg.image_shapes:
        return ImageObsEncoder(cfg.obs_dim, cfg.n_obs_steps, cfg.image_shapes, **cfg.image_encoder_kwargs)
    return build_encoder(cfg.encoder, cfg.obs_dim, cfg.n_obs_steps, **cfg.encoder_kwargs)


@dataclass
class DiffusionPolicyConfig(ChunkConfig):
    """Settings of a ``DiffusionPolicy`` (Diffusion Policy / BESO recipe); the single source of defaults."""

    section: ClassVar[str] = "DiffusionPolicy"

    backbone: Literal["unet", "dit", "mlp", "moe"] = "unet"
    """Denoiser network: ConditionalUnet1d, DiT1d, an MLP over the flattened chunk, or that MLP with
    noise-routed mixture-of-experts blocks (MoDE)."""
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options of the backbone (e.g. hidden, depth, embed_dim for mlp)."""
    encoder: str = "flatten"
    """Observation encoder (``diffctl.nets.build_encoder``)."""
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options of the encoder."""
    image_shapes: dict[str, list[int]] = field(default_factory=dict)
    """Cameras: observation key -> (H, W, C) of its uint8 frames (empty: state observations only)."""
    image_encoder_kwargs: dict[str, Any] = field(default_factory=image_encoder_defaults)
    """Options of the camera encoder (``nets.vision.ImageObsEncoder``: crop, width, keypoints, features),
    used instead of ``encoder`` when the policy has ``image_shapes``."""
    parameterization: Literal["edm", "vp"] = "edm"
    """EDM (continuous sigma, any solver) or VP (eps/x0/v prediction on discrete timesteps)."""
    sigma_data: float = 0.5
    """EDM data standard deviation (normalized actions in [-1, 1])."""
    p_mean: float = -1.2
    """EDM training noise: ln sigma ~ N(p_mean, p_std^2)."""
    p_std: float = 1.2
    """EDM training noise spread."""
    num_train_timesteps: int = 100
    """VP training timesteps."""
    beta_schedule: str = "squaredcos_cap_v2"
    """VP beta schedule (diffusers' names)."""
    prediction: Literal["eps", "x0", "v"] = "eps"
    """VP network target."""
    clip_sample: float | None = 1.0
    """VP: clamp the clean-sample estimate to this bound (None: no clamp)."""
    goal_dropout: float = 0.1
    """Probability of dropping the goal in training (classifier-free guidance)."""
    seed: int = 0
    """Seed of the network's initial weights."""

    def validate(self) -> None:
        super().validate()
        for key, shape in self.image_shapes.items():
            if len(shape) != 3 or min(int(v) for v in shape) < 1:
                raise ValueError(f"{self.section} image_shapes[{key!r}] must be (H, W, C), got {shape!r}")
            if key == "observations":
                raise ValueError(f"{self.section} image_shapes: 'observations' is the state vector's key")
        if not 0.0 <= self.goal_dropout < 1.0:
            raise ValueError(f"goal_dropout must be in [0, 1), got {self.goal_dropout}")
        if self.sigma_data <= 0 or self.p_std <= 0 or self.num_train_timesteps < 1:
            raise ValueError(
                f"{self.section} needs sigma_data > 0, p_std > 0 and num_train_timesteps >= 1, got "
                f"{self.sigma_data}, {self.p_std}, {self.num_train_timesteps}"
            )


class DiffusionPolicy(Configurable, Policy):
    """Diffusion policy over action chunks: ``fit_normalizers``, train ``network`` on ``loss``, ``act``.

    Built from keyword settings (the fields of ``config_class``) or ``DiffusionPolicy.from_config(cfg)``.
    """

    config_class: ClassVar[type[DiffusionPolicyConfig]] = DiffusionPolicyConfig
    default_sampler: ClassVar[dict[str, Any]] = {}
    samples_from_noise: ClassVar[bool] = True
    """Sampling starts from ``sigmas()[0] * noise`` (what steering and chain fine-tuning rebuild)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        sampler: SamplerConfig | Mapping[str, Any] | None = None,
        normalizers: Mapping[str, Normalizer] | None = None,
        **settings: Any,
    ) -> None:
        self.config = self.config_class.from_dict({"obs_dim": obs_dim, "action_dim": action_dim, **settings})
        cfg = self.config
        self.obs_dim, self.action_dim, self.goal_dim = cfg.obs_dim, cfg.action_dim, cfg.goal_dim
        self.horizon, self.n_obs_steps, self.n_action_steps = cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps
        self.parameterization = cfg.parameterization
        if isinstance(sampler, SamplerConfig):
            self.sampler = sampler
        else:
            self.sampler = SamplerConfig.from_dict({**self.default_sampler, **dict(sampler or {})})
        self.normalizers: dict[str, Normalizer] = dict(normalizers or {})
        self.alphas_cumprod = schedules.vp_alphas_cumprod(cfg.beta_schedule, cfg.num_train_timesteps).float()
        self.network: nn.Module = self.build_network()
        self.seed(self.sampler.seed)
        self.reset()

    def build_network(self) -> nn.Module:
        """Encoder + backbone, initialized from ``config.seed`` without touching the global RNG."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            enc = build_observation_encoder(cfg)
            cond_dim = enc.out_dim + (cfg.goal_dim + 1 if cfg.goal_dim else 0)
            net = build_backbone(cfg.backbone, cfg.action_dim, cfg.horizon, cond_dim, **cfg.backbone_kwargs)
        scale = 1.0 if cfg.parameterization == "vp" else EDM_NOISE_SCALE
        return ChunkDenoiserNet(enc, net, cfg.goal_dim, scale)

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

    def normalizer(self, key: str) -> Normalizer:
        if key not in self.normalizers:
            raise ValueError(
                f"DiffusionPolicy has no {key!r} normalizer; call fit_normalizers(...) before use"
            )
        return self.normalizers[key]

    def split_obs(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
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
            return EDMDenoiser(self.network, self.config.sigma_data)
        cfg = self.config
        return VPDenoiser(
            self.network, self.alphas_cumprod, prediction=cfg.prediction, clip_x0=cfg.clip_sample
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

    def sigmas(self, sampler: SamplerConfig | None = None) -> torch.Tensor:
        """The descending sigma grid of the current sampler settings (float32, ends in 0)."""
        return self.grid(sampler).clone()

    def grid(self, sampler: SamplerConfig | None = None) -> torch.Tensor:
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
        """Denoising loss of a raw batch (``obs``, ``actions``, optional ``action_mask`` and ``goal``):
        ``kernels.losses.edm_loss`` or ``vp_loss`` on normalized actions, padded steps masked out."""
        a, raw, m = split_batch(self, batch)
        cond = self.network.condition(*raw)
        cfg = self.config
        if self.parameterization == "edm":
            per_sample = edm_loss(
                self.denoiser(), a, cond, cfg.p_mean, cfg.p_std, cfg.sigma_data, weight_mask=m
            )
        else:
            per_sample = vp_loss(self.network, a, self.alphas_cumprod, cfg.prediction, cond, weight_mask=m)
        loss = per_sample.mean()
        return loss, {"loss": float(loss.detach())}

    # ----- inference -----------------------------------------------------------------------------------
    def conditioned_denoiser(
        self, hist: torch.Tensor
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``denoise(x, sigma)`` on normalized chunks, conditioned on a validated raw history ``(B, To, D)``
        (``history_tensor``), with classifier-free guidance on the goal at ``sampler.guidance_scale``
        (``kernels.guidance.ClassifierFreeGuidance``; 1 NFE per call when the scale is 0 or 1)."""
        state, images = split_history(self, hist)
        obs, goal = self.split_obs(state)
        o = self.normalizer("obs").normalize(obs)
        denoise, w = self._denoiser(), self.sampler.guidance_scale
        net = self.network
        if not self.goal_dim or goal is None or w == 0.0:
            return functools.partial(denoise, cond=net.condition(o, None, None, images))
        g = self.normalizer("goal").normalize(goal)
        cond = net.condition(o, g, torch.ones(o.shape[0], device=o.device), images)
        if w == 1.0:
            return functools.partial(denoise, cond=cond)
        return ClassifierFreeGuidance(denoise, cond, net.condition(o, None, None, images), w)

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
        state, _ = split_history(self, hist)
        device = state.device
        bsz = state.shape[0]
        with eval_mode(self.network):
            sigmas = self.sigmas().to(device)
            shape = (bsz, self.horizon, self.action_dim)
            noise = self.start_noise(shape, noise, device)
            act_norm = self.normalizer("action")
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
            denoise = self.conditioned_denoiser(hist)
            mask, known = prefix_mask(self, prefix, shape, device)
            x0 = sample(
                denoise, x, sigmas, solver=self.sampler.solver, generator=self._generator,
                mask=mask, known=known, **self.sampler.options,
            )  # fmt: skip
        return act_norm.unnormalize(x0.clamp(-1.0, 1.0))

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: empty history and action queue; ``seed`` reseeds the sampling generator."""
        self.runner = ChunkRunner(self)
        if seed is not None:
            self.seed(seed)

    def check_obs(self, obs: Any) -> Any:
        """One raw observation ``(Do,)`` or ``(Do + Dg,)`` as finite float32, else a ValueError saying why;
        with cameras, the environment's dict of that vector (``observations``) and each camera's frame."""
        widths = (self.obs_dim, self.obs_dim + self.goal_dim)
        if self.config.image_shapes:
            return as_image_observation(obs, widths, self.config.image_shapes)
        return as_observation(obs, widths)

    def act(self, obs: Any) -> np.ndarray:
        """One observation -> one action (``ChunkRunner``: a new chunk when the planned actions run out)."""
        return self.runner.act(obs)

    # ----- persistence ---------------------------------------------------------------------------------
    def config_json(self) -> dict[str, Any]:
        """Everything needed to rebuild this policy (the content of ``config.json``)."""
        return agent_config(self, VERSION)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_agent_dir(path, self.config_json(), self.network.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> DiffusionPolicy:
        """Rebuild from a directory written by ``save``; keyword overrides change ``SamplerConfig`` fields."""
        config, state = read_agent_config(path, cls.__name__, VERSION)
        sampler = SamplerConfig.from_dict(config["sampler"]).replace(**overrides)
        return build_agent(cls, path, config, state, sampler)
