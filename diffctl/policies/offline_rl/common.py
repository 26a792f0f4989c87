"""``OfflineRLAgent``: what DiffusionQL, IDQL and EDP share — normalizers, the diffusion actor, twin critics
with target networks, acting by ranking N sampled candidates with Q, and the agent directory format.

Training goes through the ordinary ``Trainer``: ``network`` holds the actor, the critics and (IQL) the
value net as trainable parameters and the target networks as frozen ones, and ``loss`` returns the sum of
the actor and critic losses with stop-gradients placed so that each term only trains its own part (the
actor's Q term sees the critic's weights detached). The target networks take their Polyak step at the start
of every training ``loss`` call, i.e. once per optimizer step, so no Trainer hook is needed.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from diffctl.datasets.normalizer import Normalizer
from diffctl.nets.mlp import ACTIVATIONS
from diffctl.policies.base import (
    SamplerConfig,
    agent_config,
    build_agent,
    read_agent_config,
    write_agent_dir,
)
from diffctl.policies.fused import refuse_fused
from diffctl.policies.offline_rl.actor import DiffusionActor, softmax_pick
from diffctl.policies.offline_rl.critics import (
    TwinQ,
    ValueNet,
    frozen_copy,
    polyak_update,
    set_state_inputs,
)
from diffctl.policies.offline_rl.transition_agent import (
    TransitionAgent,
    TransitionAgentConfig,
    Transitions,
)

VERSION = 1
AGENT_KEYS = ("hyperparameters", "normalizers", "sampler")
SELECTIONS = ("argmax", "softmax")
ACT_KEYS = ("n_candidates", "selection", "temperature", "noise_scale")
DEFAULT_SAMPLER = {"solver": "ddpm", "steps": 5, "schedule": "vp"}
CRITIC_INPUTS = ("normalized", "raw")
# What agents saved before a hyperparameter existed were built with (loaded agents keep their critics).
LEGACY_HPARAMS = {"critic_activation": "mish", "critic_inputs": "normalized"}


def finite_non_negative(label: str, value: Any) -> float:
    """``value`` as a float when it is a finite int or float >= 0 (not a bool or a string), else a
    ValueError naming ``label``."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or not 0.0 <= value < float("inf"):
        raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
    return float(value)


def open_unit_interval(label: str, value: Any) -> float:
    """``value`` as a float when it lies strictly between 0 and 1 (an expectile), else a ValueError naming
    ``label``."""
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{label} must be in (0, 1), got {value!r}")
    return float(value)


class OfflineRLNet(nn.Module):
    """Container the Trainer optimizes: actor, critic, optional value; frozen target copies."""

    def __init__(self, actor: DiffusionActor, critic: TwinQ, value: ValueNet | None, target_actor: bool):
        super().__init__()
        self.actor, self.critic, self.value = actor, critic, value
        self.critic_target = frozen_copy(critic)
        self.actor_target = frozen_copy(actor) if target_actor else None


@dataclass
class OfflineRLConfig(TransitionAgentConfig):
    """Settings every diffusion offline-RL agent shares (actor, twin critics, rewards, acting)."""

    section: ClassVar[str] = "OfflineRLAgent"

    hidden: int = 256
    """Width of the actor's MLP."""
    depth: int = 3
    """Hidden layers of the actor's MLP."""
    critic_activation: str = "mish"
    """Activation of the critics (``diffctl.nets.mlp.ACTIVATIONS``)."""
    critic_inputs: Literal["normalized", "raw"] = "normalized"
    """Whether the critics read normalized or raw states."""
    num_train_timesteps: int = 5
    """Denoising steps of the VP actor (Diffusion-QL's T)."""
    beta_schedule: str = "dql_vp"
    """VP beta schedule of the actor."""
    n_candidates: int = 50
    """Actions sampled per ``act``; the critics rank them."""
    selection: Literal["argmax", "softmax"] = "softmax"
    """How the act picks among candidates: best Q, or a softmax over Q."""
    temperature: float = 1.0
    """Temperature of the softmax over Q."""
    noise_scale: float = 1.0
    """Multiplies the candidates' start noise (below 1: low-temperature sampling; 0 with ddim: the mode)."""

    def validate(self) -> None:
        super().validate()
        name = self.section
        for key in ("hidden", "depth", "num_train_timesteps", "n_candidates"):
            if getattr(self, key) < 1:
                raise ValueError(f"{name} {key} must be a positive integer, got {getattr(self, key)!r}")
        if self.critic_activation not in ACTIVATIONS:
            raise ValueError(
                f"{name} critic_activation must be one of {sorted(ACTIVATIONS)}, "
                f"got {self.critic_activation!r}"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        finite_non_negative("noise_scale", self.noise_scale)


class OfflineRLAgent(TransitionAgent):
    """Base of the diffusion offline RL agents; subclasses define ``critic_loss`` and ``actor_loss``."""

    config_class: ClassVar[type[OfflineRLConfig]] = OfflineRLConfig
    uses_value: bool = False
    uses_target_actor: bool = False
    legacy_hparams: ClassVar[dict[str, Any]] = LEGACY_HPARAMS

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
        obs_dim, action_dim, goal_dim = cfg.obs_dim, cfg.action_dim, cfg.goal_dim
        num_train_timesteps, beta_schedule = cfg.num_train_timesteps, cfg.beta_schedule
        hidden, depth, critic_hidden, critic_depth = (
            cfg.hidden,
            cfg.depth,
            cfg.critic_hidden,
            cfg.critic_depth,
        )
        critic_activation, seed = cfg.critic_activation, cfg.seed
        self.obs_dim, self.action_dim, self.goal_dim = obs_dim, action_dim, goal_dim
        self.state_dim = obs_dim + goal_dim
        sampler_cfg = (
            sampler
            if isinstance(sampler, SamplerConfig)
            else SamplerConfig.from_dict(
                {**DEFAULT_SAMPLER, "steps": num_train_timesteps, **dict(sampler or {})}
            )
        )
        refuse_fused(sampler_cfg, type(self).__name__)
        self.normalizers: dict[str, Normalizer] = dict(normalizers or {})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            actor = DiffusionActor(
                self.state_dim, action_dim, num_train_timesteps, beta_schedule, hidden, depth
            )
            critic = TwinQ(self.state_dim, action_dim, critic_hidden, critic_depth, critic_activation)
            value = (
                ValueNet(self.state_dim, critic_hidden, critic_depth, critic_activation)
                if self.uses_value
                else None
            )
            self.network: nn.Module = OfflineRLNet(actor, critic, value, self.uses_target_actor)
        self._set_critic_inputs()
        self.sampler = sampler_cfg
        self.check_sampler()
        self.seed(self.sampler.seed)
        self.reset()

    # ----- settings ------------------------------------------------------------------------------------
    def configure_act(self, **settings: Any) -> None:
        """Change ``n_candidates``, ``selection`` (argmax | softmax), ``temperature`` (of the softmax over Q)
        or ``noise_scale`` without retraining (they are fields of ``config``).

        ``noise_scale`` multiplies the start noise of every candidate: 1 samples the learned (behaviour-like)
        distribution; below 1 is low-temperature sampling (Decision Diffuser); 0 with the deterministic
        ``ddim`` solver gives one action per state, near the mode, like the mean action of a Gaussian
        actor (then ``n_candidates=1`` suffices). Stochastic solvers (ddpm) still add their step noise."""
        unknown = sorted(set(settings) - set(ACT_KEYS))
        if unknown:
            raise ValueError(f"unknown act settings {unknown}; valid: {list(ACT_KEYS)}")
        self.config = self.config.replace(**settings)

    @property
    def act_settings(self) -> dict[str, Any]:
        """The act-time settings of ``config`` (``ACT_KEYS``)."""
        return {k: getattr(self.config, k) for k in ACT_KEYS}

    def check_sampler(self) -> None:
        """The sampler must walk the actor's VP timesteps: schedule 'vp' or 'auto', steps <= T."""
        if self.sampler.schedule not in ("vp", "auto"):
            raise ValueError(
                f"{type(self).__name__} samples its VP actor on its training timesteps; sampler schedule "
                f"must be 'vp' or 'auto', got {self.sampler.schedule!r}"
            )
        self.actor.sigmas(self.sampler.steps, self.sampler.spacing)

    @property
    def actor(self) -> DiffusionActor:
        return self.network.actor

    # ----- normalization -------------------------------------------------------------------------------
    def normalizers_changed(self) -> None:
        self._set_critic_inputs()

    def _set_critic_inputs(self) -> None:
        """Point the critics' ``StateInput`` at what ``critic_inputs`` asks for: the normalized state as is,
        or (``raw``) the inverse of the observation and goal normalizers. Identity until they are fitted."""
        scale, offset = torch.ones(self.state_dim), torch.zeros(self.state_dim)
        keys = ("obs", "goal") if self.goal_dim else ("obs",)
        if self.hparams["critic_inputs"] == "raw" and all(k in self.normalizers for k in keys):
            scale = torch.cat([torch.as_tensor(1.0 / self.normalizers[k].scale) for k in keys])
            offset = torch.cat(
                [torch.as_tensor(-self.normalizers[k].offset / self.normalizers[k].scale) for k in keys]
            )
        set_state_inputs(self.network, scale.float(), offset.float())

    # ----- training ------------------------------------------------------------------------------------
    def grad_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameter groups the Trainer clips separately (the critic's TD gradients are orders of magnitude
        larger than the actor's denoising gradients; one global norm would starve the actor)."""
        net = self.network
        groups = {"actor": list(net.actor.parameters()), "critic": list(net.critic.parameters())}
        if net.value is not None:
            groups["value"] = list(net.value.parameters())
        return groups

    def update_targets(self) -> None:
        """One Polyak step of the target networks toward the online ones."""
        net, tau = self.network, self.hparams["tau"]
        polyak_update(net.critic_target, net.critic, tau)
        if net.actor_target is not None:
            polyak_update(net.actor_target, net.actor, tau)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Critic (+ value) loss + actor loss of a raw batch; in training mode first moves the targets."""
        if self.network.training and torch.is_grad_enabled():
            self.update_targets()
        tr = self.transitions(batch)
        critic_loss, info = self.critic_loss(tr)
        actor_loss, actor_info = self.actor_loss(tr)
        total = critic_loss + actor_loss
        return total, {**info, **actor_info, "loss": float(total.detach())}

    @abstractmethod
    def critic_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss that trains the critics (and value net), with targets under stop-gradient."""

    @abstractmethod
    def actor_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss that trains the actor only."""

    def sample_actions(
        self,
        state: torch.Tensor,
        actor: DiffusionActor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Normalized actions from ``actor`` (default: the online one) with the agent's sampler."""
        cfg = self.sampler
        net = actor if actor is not None else self.actor
        return net.sample(state, net.sigmas(cfg.steps, cfg.spacing), cfg.solver, generator, **cfg.options)

    def scored_candidates(
        self, state: torch.Tensor, noise: torch.Tensor, solver: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidates ``(B, N, Da)`` sampled from normalized states ``(B, Ds)`` and start noise ``(B, N, Da)``
        with the agent's sampler (``solver`` overrides its solver and drops its options), and their target
        critic's ``min(Q1, Q2)`` ``(B, N)``; no gradient."""
        bsz, n, da = noise.shape
        cfg = self.sampler
        rep = state.repeat_interleave(n, dim=0)
        options = cfg.options if solver is None else {}
        with torch.no_grad():
            cand = self.actor.sample(rep, self.actor.sigmas(cfg.steps, cfg.spacing), solver or cfg.solver,
                                     self._generator, noise.reshape(bsz * n, da), **options)  # fmt: skip
            q = self.network.critic_target.q_min(rep, cand).reshape(bsz, n)
        return cand.reshape(bsz, n, da), q

    # ----- acting --------------------------------------------------------------------------------------
    @torch.no_grad()
    def select_actions(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Raw observations ``(B, Do [+ Dg])`` -> raw actions ``(B, Da)``: sample ``n_candidates`` per
        observation, score them with the target critic's ``min(Q1, Q2)`` and pick by ``selection``."""
        device = next(self.network.parameters()).device
        obs = obs.to(device, torch.float32)
        if not torch.isfinite(obs).all():
            raise ValueError("observation contains NaN or inf")
        o, g = self._split(obs)
        bsz, n = obs.shape[0], self.config.n_candidates
        if noise is not None:
            if tuple(noise.shape) != (bsz, n, self.action_dim):
                raise ValueError(
                    f"noise must have shape {(bsz, n, self.action_dim)}, got {tuple(noise.shape)}"
                )
        else:
            noise = torch.randn((bsz, n, self.action_dim), generator=self._generator)
        was_training = self.network.training
        self.network.eval()
        try:
            cand, q = self.scored_candidates(self._state(o, g), noise * self.config.noise_scale)
        finally:
            self.network.train(was_training)
        if self.config.selection == "argmax":
            pick = q.argmax(dim=-1)
        else:
            pick = softmax_pick(q, self.config.temperature, self._generator)
        best = cand[torch.arange(bsz, device=device), pick]
        return self.normalizer("action").unnormalize(best)

    # ----- persistence ---------------------------------------------------------------------------------
    def config_json(self) -> dict[str, Any]:
        """Everything needed to rebuild the agent (the content of ``config.json``)."""
        return agent_config(self, VERSION)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_agent_dir(path, self.config_json(), self.network.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> OfflineRLAgent:
        """Rebuild a saved agent; overrides are ``n_candidates``/``selection``/``temperature`` or
        ``SamplerConfig`` fields (solver, steps, ...)."""
        config, state = read_agent_config(path, cls.__name__, VERSION, AGENT_KEYS)
        config = {**config, "hyperparameters": {**cls.legacy_hparams, **config["hyperparameters"]}}
        sampler_keys = set(SamplerConfig.__dataclass_fields__)
        unknown = sorted(set(overrides) - set(ACT_KEYS) - sampler_keys)
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} load overrides {unknown}; act settings: {list(ACT_KEYS)}, "
                f"sampler: {sorted(sampler_keys)}"
            )
        act = {**config.get("act", {}), **{k: v for k, v in overrides.items() if k in ACT_KEYS}}
        sampler = SamplerConfig.from_dict(config["sampler"]).replace(
            **{k: v for k, v in overrides.items() if k not in ACT_KEYS}
        )
        return build_agent(cls, path, config, state, sampler, act)
