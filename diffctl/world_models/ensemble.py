"""MLPEnsembleWorldModel: the one-step baseline of MBPO / MOPO.

``members`` MLPs, trained side by side on the same batches from different initial weights, each predict a
diagonal Gaussian over the normalized (state change, reward) and a terminal logit from the normalized
(state, action). The log-variances are softly bounded by learned limits (MBPO's ``max_logvar`` /
``min_logvar``, with their small penalty). After training the ``elites`` members with the lowest validation
error on the held-out episodes are kept; each imagined step uses a random elite per sample and draws from its
Gaussian (``deterministic=True``: its mean).
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from diffctl.core.config import Configurable
from diffctl.core.modules import param_device
from diffctl.core.persistence import agent_config, construct, read_agent_config, restore, write_agent_dir
from diffctl.core.seeding import SeededSampler
from diffctl.datasets.normalizer import Normalizer
from diffctl.world_models.base import WorldModel, WorldModelConfig
from diffctl.world_models.data import WorldModelData

VERSION = 1


@dataclass
class MLPEnsembleConfig(WorldModelConfig):
    """Settings of ``MLPEnsembleWorldModel``."""

    section: ClassVar[str] = "MLPEnsembleWorldModel"

    members: int = 7
    """Ensemble size."""
    elites: int = 5
    """Members kept for prediction (lowest validation error)."""
    hidden: int = 200
    """Width of each member's MLP."""
    depth: int = 4
    """Hidden layers of each member."""
    deterministic: bool = False
    """Predict each member's mean instead of sampling its Gaussian."""

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.elites <= self.members:
            raise ValueError(
                f"MLPEnsembleWorldModel needs 1 <= elites <= members, got {self.elites}, {self.members}"
            )
        if self.hidden < 1 or self.depth < 1:
            raise ValueError(
                f"MLPEnsembleWorldModel hidden and depth must be >= 1, got {self.hidden}, {self.depth}"
            )


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers applied to (members, B, in) at once."""

    def __init__(self, members: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(members, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleNet(nn.Module):
    """(members, B, in) -> mean, log-variance (members, B, out) and terminal logits (members, B)."""

    def __init__(self, members: int, d_in: int, d_out: int, hidden: int, depth: int) -> None:
        super().__init__()
        dims = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in itertools.pairwise(dims))
        self.head = EnsembleLinear(members, hidden, 2 * d_out + 1)
        self.max_logvar = nn.Parameter(torch.full((d_out,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((d_out,), -10.0))
        self.d_out = d_out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            x = F.silu(layer(x))
        out = self.head(x)
        mean, raw = out[..., : self.d_out], out[..., self.d_out : 2 * self.d_out]
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar, out[..., -1]


class MLPEnsembleWorldModel(Configurable, SeededSampler, WorldModel):
    """See the module docstring."""

    config_class: ClassVar[type[MLPEnsembleConfig]] = MLPEnsembleConfig
    uses_sampler: ClassVar[bool] = False

    def __init__(
        self,
        *,
        normalizers: dict[str, Normalizer] | None = None,
        elite_members: list[int] | None = None,
        **settings: Any,
    ) -> None:
        self.config = cfg = MLPEnsembleConfig.from_dict(settings)
        self.state_dim, self.action_dim, self.segment = cfg.state_dim, cfg.action_dim, 1
        self.normalizers = dict(normalizers or {})
        self.elite_members = list(elite_members) if elite_members is not None else list(range(cfg.elites))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.network: nn.Module = EnsembleNet(
                cfg.members, cfg.state_dim + cfg.action_dim, cfg.state_dim + 1, cfg.hidden, cfg.depth
            )
        self.seed(None)

    # ----- data ----------------------------------------------------------------------------------------
    def fit(self, dataset: WorldModelData, mode: str = "gaussian") -> None:
        """One-step windows, held-out episodes set aside; normalizers of inputs and targets (``gaussian`` by
        default: the likelihood is fitted in normalized units)."""
        dataset.set_horizon(1)
        dataset.hold_out(self.config.held_out)
        delta = dataset.obs[dataset.starts + 1] - dataset.obs[dataset.starts]
        self.normalizers = {
            "obs": Normalizer.fit(dataset.obs, mode, name="observations"),
            "action": Normalizer.fit(dataset.actions, mode, name="actions"),
            "delta": Normalizer.fit(delta, mode, name="state changes"),
            "reward": Normalizer.fit(dataset.rewards[:, None], mode, name="rewards"),
        }

    def _inputs(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat(
            [self.normalizers["obs"].normalize(obs), self.normalizers["action"].normalize(actions)], -1
        )
        return x.unsqueeze(0).expand(self.config.members, -1, -1)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Gaussian negative log-likelihood per member (summed over members), terminal BCE, log-variance
        bound penalty."""
        obs, act = batch["obs"].float(), batch["actions"][:, 0].float()
        delta = self.normalizers["delta"].normalize(batch["next_obs"][:, 0].float() - obs)
        reward = self.normalizers["reward"].normalize(batch["rewards"][:, :1].float())
        target = torch.cat([delta, reward], -1).unsqueeze(0)
        mean, logvar, logit = self.network(self._inputs(obs, act))
        nll = (((mean - target) ** 2) * torch.exp(-logvar) + logvar).mean(dim=(1, 2)).sum()
        done = batch["terminals"][:, 0].float().unsqueeze(0).expand_as(logit)
        bce = F.binary_cross_entropy_with_logits(logit, done, reduction="none").mean(1).sum()
        net = self.network
        bound = 0.01 * (net.max_logvar.sum() - net.min_logvar.sum())
        loss = nll + bce + bound
        mse = float(((mean - target) ** 2).mean().detach())
        return loss, {"loss": float(loss.detach()), "mse": mse}

    @torch.no_grad()
    def member_errors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each member's mean squared error (normalized units) on one-step windows."""
        obs, act = batch["obs"].float(), batch["actions"][:, 0].float()
        delta = self.normalizers["delta"].normalize(batch["next_obs"][:, 0].float() - obs)
        reward = self.normalizers["reward"].normalize(batch["rewards"][:, :1].float())
        mean, _, _ = self.network(self._inputs(obs, act))
        return ((mean - torch.cat([delta, reward], -1).unsqueeze(0)) ** 2).mean(dim=(1, 2))

    def after_training(self, run_dir: str | os.PathLike[str], dataset: WorldModelData) -> list[int]:
        """Pick the elites by validation error on the held-out episodes and save them with the checkpoint."""
        dataset.set_horizon(1)
        dataset.hold_out(self.config.held_out)
        rows = dataset.validation if len(dataset.validation) else dataset.starts
        errors = self.member_errors(dataset.windows(rows[:20000]))
        self.elite_members = sorted(errors.argsort()[: self.config.elites].tolist())
        self.save(Path(run_dir) / "checkpoint")
        return self.elite_members

    # ----- prediction ----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_segment(
        self, obs: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """One step: a random elite per sample, a draw from its Gaussian (or its mean)."""
        if not self.normalizers:
            raise ValueError(
                "MLPEnsembleWorldModel has no normalizers: train it (world_model=mlp_ensemble) or load one"
            )
        device = param_device(self.network)
        obs, act = obs.to(device), actions[:, 0].to(device)
        gen = generator if generator is not None else self.generator
        elites = torch.tensor(self.elite_members)
        pick = elites[torch.randint(len(elites), (len(obs),), generator=gen)].to(device)
        mean, logvar, logit = self.network(self._inputs(obs, act))
        rows = torch.arange(len(obs), device=device)
        mean, logvar, logit = mean[pick, rows], logvar[pick, rows], logit[pick, rows]
        if not self.config.deterministic:
            mean = mean + torch.randn(mean.shape, generator=gen).to(device) * (0.5 * logvar).exp()
        delta = self.normalizers["delta"].unnormalize(mean[:, : self.state_dim])
        reward = self.normalizers["reward"].unnormalize(mean[:, self.state_dim :])[:, 0]
        return {
            "observations": (obs + delta)[:, None],
            "rewards": reward[:, None],
            "terminals": torch.sigmoid(logit)[:, None],
        }

    # ----- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        config = agent_config(self, VERSION, elite_members=self.elite_members)
        return write_agent_dir(path, config, self.network.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> MLPEnsembleWorldModel:
        """Load a saved ensemble; ``deterministic=True`` may be passed."""
        unknown = set(overrides) - {"deterministic"}
        if unknown:
            raise ValueError(f"MLPEnsembleWorldModel.load takes only deterministic=, got {sorted(unknown)}")
        config, state = read_agent_config(
            path, cls.__name__, VERSION, keys=("hyperparameters", "normalizers")
        )
        try:
            normalizers = {k: Normalizer.from_dict(v) for k, v in config["normalizers"].items()}
        except ValueError as err:
            raise ValueError(f"{path}/config.json: {err}") from err
        hp = {**config["hyperparameters"], **overrides}
        model = construct(cls, path, normalizers=normalizers, elite_members=config.get("elite_members"), **hp)
        restore(model, config, state, path).network.eval()
        return model
