"""AnchoredDiffusionPolicy: truncated diffusion from k-means anchors of action chunks (DiffusionDrive).

``fit`` clusters the normalized action chunks of the training data into ``num_anchors`` anchors. Training
(``kernels.losses.anchored_loss``) denoises the bridge from the anchor nearest each chunk to the chunk, for
noise levels up to ``trunc_sigma``, and a head on the observation features learns which anchor is nearest.
Acting scores the anchors with the head, noises the chosen one to ``trunc_sigma`` and runs ``sampler.steps``
(default 2) Euler steps from there: 2 NFE per chunk instead of tens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffctl.core.modules import eval_mode
from diffctl.core.sampler import refuse_fused
from diffctl.kernels import schedules
from diffctl.kernels.losses import anchored_loss
from diffctl.kernels.samplers import sample
from diffctl.nets import build_backbone
from diffctl.nets.mlp import mlp
from diffctl.policies.base import SamplerConfig
from diffctl.policies.diffusion import (
    EDM_NOISE_SCALE,
    ChunkDenoiserNet,
    DiffusionPolicy,
    DiffusionPolicyConfig,
    build_observation_encoder,
    history_tensor,
    prefix_mask,
    split_batch,
    split_history,
)

__all__ = ["AnchoredDiffusionPolicy", "AnchoredPolicyConfig"]


@dataclass
class AnchoredPolicyConfig(DiffusionPolicyConfig):
    """Settings of an ``AnchoredDiffusionPolicy`` (an EDM policy whose sampling starts at anchors)."""

    section: ClassVar[str] = "AnchoredDiffusionPolicy"

    parameterization: Literal["edm"] = "edm"  # type: ignore[assignment]
    """Always EDM (continuous sigma)."""
    num_anchors: int = 20
    """k-means anchors of the normalized action chunks."""
    trunc_sigma: float = 0.5
    """Noise level the chosen anchor is noised to before denoising (normalized action units)."""
    score_weight: float = 1.0
    """Weight of the anchor head's cross-entropy beside the denoising loss."""
    anchor_selection: Literal["argmax", "sample"] = "argmax"
    """Act from the head's most likely anchor, or from one drawn by its probabilities (multimodal)."""
    anchor_windows: int = 20000
    """Training windows k-means sees (a seeded subsample when the data has more)."""

    def validate(self) -> None:
        super().validate()
        if self.num_anchors < 1 or self.anchor_windows < self.num_anchors:
            raise ValueError(
                f"{self.section} needs num_anchors >= 1 and anchor_windows >= num_anchors, got "
                f"{self.num_anchors}, {self.anchor_windows}"
            )
        if not self.trunc_sigma > 0 or self.score_weight < 0:
            raise ValueError(f"{self.section} needs trunc_sigma > 0 and score_weight >= 0")


class AnchoredNet(ChunkDenoiserNet):
    """The chunk denoiser plus the anchors (a buffer, saved with the weights) and the anchor-scoring head."""

    def __init__(self, encoder: nn.Module, backbone: nn.Module, goal_dim: int, cond_dim: int,
                 num_anchors: int, horizon: int, action_dim: int) -> None:  # fmt: skip
        super().__init__(encoder, backbone, goal_dim, EDM_NOISE_SCALE)
        self.head = mlp(cond_dim, num_anchors, hidden=256, depth=1, activation="mish")
        self.register_buffer("anchors", torch.zeros(num_anchors, horizon, action_dim))


class AnchoredDiffusionPolicy(DiffusionPolicy):
    """Truncated diffusion from anchors; see the module docstring."""

    config_class: ClassVar[type[DiffusionPolicyConfig]] = AnchoredPolicyConfig
    default_sampler: ClassVar[dict[str, Any]] = {"solver": "euler", "steps": 2}
    samples_from_noise: ClassVar[bool] = False

    def build_network(self) -> nn.Module:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            enc = build_observation_encoder(cfg)
            cond_dim = enc.out_dim + (cfg.goal_dim + 1 if cfg.goal_dim else 0)
            net = build_backbone(cfg.backbone, cfg.action_dim, cfg.horizon, cond_dim, **cfg.backbone_kwargs)
            return AnchoredNet(enc, net, cfg.goal_dim, cond_dim, cfg.num_anchors, cfg.horizon, cfg.action_dim)

    def grid(self, sampler: SamplerConfig | None = None) -> torch.Tensor:
        """Karras grid from ``trunc_sigma`` down to ``sampler.sigma_min`` with ``sampler.steps`` steps."""
        cfg = sampler or self.sampler
        top = self.config.trunc_sigma
        key = ("anchored_sigmas", cfg.steps, cfg.sigma_min, cfg.rho, top)
        return self._cached(key, lambda: schedules.karras(cfg.steps, cfg.sigma_min, top, cfg.rho).float())

    # ----- fitting and training --------------------------------------------------------------------------
    def fit(self, dataset: Any, mode: str = "limits") -> None:
        """Normalizers from the dataset's arrays, then k-means anchors of its normalized action chunks."""
        from sklearn.cluster import KMeans

        goal = dataset.array("goal") if self.goal_dim else None
        self.fit_normalizers(dataset.array("obs"), dataset.array("actions"), goal, mode=mode)
        rng = np.random.default_rng(self.config.seed)
        n = min(len(dataset), self.config.anchor_windows)
        if n < self.config.num_anchors:
            raise ValueError(f"{n} training windows cannot make {self.config.num_anchors} anchors")
        idx = np.sort(rng.choice(len(dataset), n, replace=False))
        chunks = self.normalizer("action").normalize(torch.as_tensor(dataset.get_batch(idx)["actions"]))
        km = KMeans(self.config.num_anchors, n_init=4, random_state=self.config.seed)
        km.fit(chunks.reshape(n, -1).double().numpy())
        centers = torch.as_tensor(km.cluster_centers_, dtype=torch.float32)
        self.network.anchors.copy_(centers.reshape(self.network.anchors.shape))

    def nearest_anchor(self, chunks: torch.Tensor) -> torch.Tensor:
        """Index (B,) of the anchor nearest each normalized chunk (B, H, Da)."""
        anchors = self.network.anchors.to(chunks.device)
        return torch.cdist(chunks.flatten(1), anchors.flatten(1)).argmin(dim=1)

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Bridge denoising from the nearest anchor plus the head's cross-entropy on that anchor."""
        a, raw, mask = split_batch(self, batch)
        cond = self.network.condition(*raw)
        nearest = self.nearest_anchor(a)
        cfg = self.config
        anchors = self.network.anchors[nearest]
        per_sample = anchored_loss(self.denoiser(), a, anchors, cond, self.sampler.sigma_min, cfg.trunc_sigma,
                                   cfg.sigma_data, weight_mask=mask)  # fmt: skip
        denoise = per_sample.mean()
        score = F.cross_entropy(self.network.head(cond), nearest)
        loss = denoise + cfg.score_weight * score
        return loss, {"loss": float(loss.detach()), "denoise": float(denoise.detach()),
                      "anchor_ce": float(score.detach())}  # fmt: skip

    # ----- acting ----------------------------------------------------------------------------------------
    def anchor_logits(self, hist: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's anchor logits (B, K) and the conditioning vector of a validated history."""
        state, images = split_history(self, hist)
        obs, goal = self.split_obs(state)
        o = self.normalizer("obs").normalize(obs)
        g = keep = None
        if self.goal_dim and goal is not None:
            g, keep = self.normalizer("goal").normalize(goal), torch.ones(o.shape[0], device=o.device)
        cond = self.network.condition(o, g, keep, images)
        return self.network.head(cond), cond

    @torch.no_grad()
    def predict_chunk(
        self,
        obs_history: Any,
        *,
        noise: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw ``(B, H, Da)`` chunks: the head's anchor, noised to ``trunc_sigma``, then ``sampler.steps``
        steps of ``sampler.solver``; ``prefix`` raw actions are inpainted as for ``DiffusionPolicy``."""
        refuse_fused(self.sampler, type(self).__name__)
        if init is not None and self.sampler.warm_start > 0:
            raise ValueError(f"{type(self).__name__} starts from its anchors; warm starts are not supported")
        hist = history_tensor(self, obs_history)
        with eval_mode(self.network):
            logits, cond = self.anchor_logits(hist)
            if self.config.anchor_selection == "argmax":
                pick = logits.argmax(dim=1)
            else:
                pick = torch.multinomial(logits.softmax(dim=1).cpu(), 1, generator=self._generator).reshape(
                    -1
                )
            anchors = self.network.anchors[pick.to(logits.device)]
            sigmas = self.sigmas().to(anchors.device)
            noise = self.start_noise(tuple(anchors.shape), noise, anchors.device)
            x = anchors + sigmas[0] * noise
            mask, known = prefix_mask(self, prefix, tuple(x.shape), x.device)
            denoise = self._denoiser()
            x0 = sample(lambda z, s: denoise(z, s, cond), x, sigmas, solver=self.sampler.solver,
                        generator=self._generator, mask=mask, known=known,
                        **self.sampler.options)  # fmt: skip
        return self.normalizer("action").unnormalize(x0.clamp(-1.0, 1.0))
