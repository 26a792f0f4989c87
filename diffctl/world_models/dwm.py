"""DiffusionWorldModel (DWM): one diffusion sample predicts the next H states and rewards.

The denoised sequence is ``x = [s_{t+1..t+H}, r_{t..t+H-1}, done_{t..t+H-1}]`` (normalized; done as +-1), of
shape (B, H, Ds + 2), conditioned on the normalized current state and the H actions (flattened into the
conditioning vector of any 1-D backbone of ``diffctl.nets``). Training is the EDM loss of ``kernels.losses``;
prediction samples with the model's ``SamplerConfig`` (any solver; the ``world_model`` recipe uses few steps).
Longer rollouts chain H-step segments (``WorldModel.rollout``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from diffctl.core.config import Configurable
from diffctl.core.modules import eval_mode, param_device
from diffctl.core.persistence import agent_config, construct, read_agent_config, restore, write_agent_dir
from diffctl.core.sampler import SamplerConfig, refuse_fused
from diffctl.core.seeding import SeededSampler
from diffctl.datasets.normalizer import Normalizer
from diffctl.kernels import schedules
from diffctl.kernels.denoisers import EDMDenoiser
from diffctl.kernels.losses import edm_loss
from diffctl.kernels.samplers import sample as run_sampler
from diffctl.nets import build_backbone
from diffctl.world_models.base import WorldModel, WorldModelConfig
from diffctl.world_models.data import WorldModelData

VERSION = 1


@dataclass
class DWMConfig(WorldModelConfig):
    """Settings of ``DiffusionWorldModel``."""

    section: ClassVar[str] = "DiffusionWorldModel"

    segment: int = 8
    """H: steps predicted by one sample (rollouts chain segments of this length)."""
    backbone: str = "mlp"
    """1-D backbone over the H-step sequence: ``mlp``, ``unet`` or ``dit``."""
    backbone_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"hidden": 256, "depth": 3, "embed_dim": 64}
    )
    """Options of the backbone."""
    sigma_data: float = 0.5
    """EDM data standard deviation (normalized targets)."""
    p_mean: float = -1.2
    """Mean of ln(sigma) during training."""
    p_std: float = 1.2
    """Standard deviation of ln(sigma) during training."""

    def validate(self) -> None:
        super().validate()
        if self.segment < 1:
            raise ValueError(f"DiffusionWorldModel.segment must be >= 1, got {self.segment}")


class DiffusionWorldModel(Configurable, SeededSampler, WorldModel):
    """See the module docstring."""

    config_class: ClassVar[type[DWMConfig]] = DWMConfig

    def __init__(
        self,
        *,
        sampler: SamplerConfig | dict | None = None,
        normalizers: dict[str, Normalizer] | None = None,
        **settings: Any,
    ) -> None:
        self.config = cfg = DWMConfig.from_dict(settings)
        self.sampler = (
            sampler if isinstance(sampler, SamplerConfig) else SamplerConfig.from_dict(sampler or {})
        )
        refuse_fused(self.sampler, "DiffusionWorldModel")
        self.state_dim, self.action_dim, self.segment = cfg.state_dim, cfg.action_dim, cfg.segment
        self.normalizers = dict(normalizers or {})
        self.width = cfg.state_dim + 2
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            cond_dim = cfg.state_dim + cfg.segment * cfg.action_dim
            self.network: nn.Module = build_backbone(
                cfg.backbone, self.width, cfg.segment, cond_dim, **cfg.backbone_kwargs
            )
        self.seed(None)

    # ----- data ----------------------------------------------------------------------------------------
    def fit(self, dataset: WorldModelData, mode: str = "limits") -> None:
        """Cut the data into windows of this model's horizon; fit the state, action and reward normalizers."""
        dataset.set_horizon(self.segment)
        dataset.hold_out(self.config.held_out)
        self.normalizers = {
            "obs": Normalizer.fit(dataset.obs, mode, name="observations"),
            "action": Normalizer.fit(dataset.actions, mode, name="actions"),
            "reward": Normalizer.fit(dataset.rewards[:, None], mode, name="rewards"),
        }

    def denoiser(self) -> EDMDenoiser:
        return EDMDenoiser(self.network, self.config.sigma_data)

    # ----- encoding ------------------------------------------------------------------------------------
    def _cond(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        s = self.normalizers["obs"].normalize(obs)
        a = self.normalizers["action"].normalize(actions).flatten(1)
        return torch.cat([s, a], dim=1)

    def _target(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.normalizers["obs"].normalize(batch["next_obs"])
        r = self.normalizers["reward"].normalize(batch["rewards"][..., None])
        done = batch["terminals"][..., None] * 2 - 1
        return torch.cat([s, r, done], dim=-1)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        x0 = self._target(batch).float()
        cond = self._cond(batch["obs"].float(), batch["actions"].float())
        loss = edm_loss(self.denoiser(), x0, cond, P_mean=cfg.p_mean, P_std=cfg.p_std).mean()
        return loss, {"loss": float(loss.detach())}

    # ----- prediction ----------------------------------------------------------------------------------
    def grid(self) -> torch.Tensor:
        s = self.sampler
        return schedules.karras(s.steps, s.sigma_min, s.sigma_max, s.rho).float()

    @torch.no_grad()
    def predict_segment(
        self, obs: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Raw states ``(B, Ds)`` and ``(B, H, Da)`` actions -> the next H states, rewards and terminal
        probabilities (one diffusion sample)."""
        if not self.normalizers:
            raise ValueError(
                "DiffusionWorldModel has no normalizers: train it (diffctl train world_model=dwm) or load one"
            )
        device = param_device(self.network)
        obs, actions = obs.to(device), actions.to(device)
        gen = generator if generator is not None else self.generator
        sigmas = self.grid().to(device)
        noise = torch.randn((len(obs), self.segment, self.width), generator=gen).to(device)
        cond = self._cond(obs, actions)
        model = self.denoiser()
        with eval_mode(self.network):
            x = run_sampler(
                lambda x, s: model(x, s, cond), noise * sigmas[0], sigmas, solver=self.sampler.solver,
                generator=gen, **self.sampler.options,
            )  # fmt: skip
        x = x.clamp(-1.5, 1.5)  # a little room past the data's range; far outside it nothing is known
        return {
            "observations": self.normalizers["obs"].unnormalize(x[..., : self.state_dim]),
            "rewards": self.normalizers["reward"].unnormalize(x[..., self.state_dim : self.state_dim + 1])[
                ..., 0
            ],
            "terminals": ((x[..., -1] + 1) / 2).clamp(0, 1),
        }

    # ----- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_agent_dir(path, agent_config(self, VERSION), self.network.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> DiffusionWorldModel:
        """Load a saved model; ``overrides`` change sampler fields (``solver``, ``steps``, ...)."""
        config, state = read_agent_config(
            path, cls.__name__, VERSION, keys=("hyperparameters", "normalizers", "sampler")
        )
        try:
            sampler = SamplerConfig.from_dict({**config["sampler"], **overrides})
            normalizers = {k: Normalizer.from_dict(v) for k, v in config["normalizers"].items()}
        except ValueError as err:
            raise ValueError(f"{path}/config.json: {err}") from err
        model = construct(cls, path, sampler=sampler, normalizers=normalizers, **config["hyperparameters"])
        restore(model, config, state, path).network.eval()
        return model
