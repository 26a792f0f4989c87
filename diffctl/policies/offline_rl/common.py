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

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from diffctl.core.config import Config, Configurable
from diffctl.core.observations import as_observation
from diffctl.datasets.normalizer import Normalizer
from diffctl.nets.mlp import ACTIVATIONS
from diffctl.policies.base import (
    Policy,
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
    returns_reward_scale,
    set_state_inputs,
)
from diffctl.policies.offline_rl.transitions import TransitionDataset

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


class Transitions:
    """A normalized batch: states ``s``, ``s2`` (goal appended), actions ``a``, rewards ``r``, ``done``.

    ``advantage`` (no gradient) is filled by a critic loss that computes ``Q - V`` of the batch anyway (IDQL),
    so that the actor loss of the same step reuses it instead of running the critics again."""

    def __init__(
        self, s: torch.Tensor, a: torch.Tensor, r: torch.Tensor, s2: torch.Tensor, done: torch.Tensor
    ):
        self.s, self.a, self.r, self.s2, self.done = s, a, r, s2, done
        self.advantage: torch.Tensor | None = None


@dataclass
class OfflineRLConfig(Config):
    """Settings every diffusion offline-RL agent shares (actor, twin critics, rewards, acting)."""

    section: ClassVar[str] = "OfflineRLAgent"

    obs_dim: int
    """Observation features (read off the data)."""
    action_dim: int
    """Action features (read off the data)."""
    goal_dim: int = 0
    """Goal features appended to the state (goal-conditioned tasks)."""
    hidden: int = 256
    """Width of the actor's MLP."""
    depth: int = 3
    """Hidden layers of the actor's MLP."""
    critic_hidden: int = 256
    """Width of the critics' (and value net's) MLPs."""
    critic_depth: int = 3
    """Hidden layers of the critics' MLPs."""
    critic_activation: str = "mish"
    """Activation of the critics (``diffctl.nets.mlp.ACTIVATIONS``)."""
    critic_inputs: Literal["normalized", "raw"] = "normalized"
    """Whether the critics read normalized or raw states."""
    num_train_timesteps: int = 5
    """Denoising steps of the VP actor (Diffusion-QL's T)."""
    beta_schedule: str = "dql_vp"
    """VP beta schedule of the actor."""
    discount: float = 0.99
    """Bellman discount."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    reward_scale: float = 1.0
    """Rewards are ``reward_scale * r + reward_bias`` in training (fitted when reward_normalization is
    ``returns``)."""
    reward_bias: float = 0.0
    """See ``reward_scale``."""
    reward_normalization: Literal["none", "returns"] = "none"
    """``returns``: fit ``reward_scale`` so episode returns span about 1000 (IQL's locomotion recipe)."""
    n_candidates: int = 50
    """Actions sampled per ``act``; the critics rank them."""
    selection: Literal["argmax", "softmax"] = "softmax"
    """How the act picks among candidates: best Q, or a softmax over Q."""
    temperature: float = 1.0
    """Temperature of the softmax over Q."""
    noise_scale: float = 1.0
    """Multiplies the candidates' start noise (below 1: low-temperature sampling; 0 with ddim: the mode)."""
    seed: int = 0
    """Seed of the networks' initial weights."""

    def validate(self) -> None:
        name = self.section
        for key in ("obs_dim", "action_dim", "hidden", "depth", "critic_hidden", "critic_depth",
                    "num_train_timesteps", "n_candidates"):  # fmt: skip
            if getattr(self, key) < 1:
                raise ValueError(f"{name} {key} must be a positive integer, got {getattr(self, key)!r}")
        if self.goal_dim < 0:
            raise ValueError(f"{name} goal_dim must be an integer >= 0, got {self.goal_dim!r}")
        if self.critic_activation not in ACTIVATIONS:
            raise ValueError(
                f"{name} critic_activation must be one of {sorted(ACTIVATIONS)}, "
                f"got {self.critic_activation!r}"
            )
        if not 0.0 <= self.discount < 1.0:
            raise ValueError(f"{name} discount must be in [0, 1), got {self.discount}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"{name} tau (target update rate) must be in (0, 1], got {self.tau}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        finite_non_negative("noise_scale", self.noise_scale)


class OfflineRLAgent(Configurable, Policy):
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

    @property
    def critic(self) -> TwinQ:
        return self.network.critic

    # ----- normalization -------------------------------------------------------------------------------
    def fit_normalizers(
        self, obs: Any, actions: Any, goal: Any = None, mode: str = "limits", **_: Any
    ) -> None:
        """Fit observation (``mode``), action (always ``limits``: the actor lives in [-1, 1]) and goal
        normalizers from raw arrays with features on the last axis."""
        obs = np.asarray(obs, dtype=np.float64)[..., : self.obs_dim]
        self.normalizers = {
            "obs": Normalizer.fit(obs, mode, name="observations"),
            "action": Normalizer.fit(actions, "limits", name="actions"),
        }
        if self.goal_dim:
            if goal is None:
                raise ValueError(
                    f"goal-conditioned agent (goal_dim={self.goal_dim}) needs goals to fit normalizers"
                )
            self.normalizers["goal"] = Normalizer.fit(goal, mode, name="goals")
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

    @classmethod
    def make_dataset(cls, store: Any, task: Mapping[str, Any]) -> TransitionDataset:
        """Training data for the train pipeline: single-step transitions of ``store`` with the task
        section's ``obs_keys``, ``action_key`` and ``goal`` mode (not the task's action windows)."""
        return TransitionDataset(
            store,
            obs_keys=tuple(task.get("obs_keys", ("observations",))),
            action_key=str(task.get("action_key", "actions")),
            goal=task.get("goal"),
        )

    def fit(self, dataset: Any, mode: str = "gaussian") -> None:
        """Fit normalizers (and the reward scale when ``reward_normalization='returns'``) from a
        ``TransitionDataset``; checks its dimensions against the agent's."""
        if dataset.action_dim != self.action_dim:
            raise ValueError(
                f"dataset actions have {dataset.action_dim} dimensions; {type(self).__name__} was built "
                f"with action_dim={self.action_dim}"
            )
        if dataset.obs_dim != self.obs_dim or dataset.goal_dim != self.goal_dim:
            raise ValueError(
                f"dataset has obs_dim={dataset.obs_dim}, goal_dim={dataset.goal_dim}; the agent expects "
                f"obs_dim={self.obs_dim}, goal_dim={self.goal_dim}"
            )
        goal = dataset.array("goal") if self.goal_dim else None
        self.fit_normalizers(dataset.array("obs"), dataset.array("actions"), goal, mode=mode)
        if self.config.reward_normalization == "returns":
            scale = returns_reward_scale(dataset.array("rewards"), dataset.episode_ends.tolist())
            self.config = self.config.replace(reward_scale=scale)

    def normalizer(self, key: str) -> Normalizer:
        if key not in self.normalizers:
            raise ValueError(f"{type(self).__name__} has no {key!r} normalizer; call fit(...) first")
        return self.normalizers[key]

    def _state(self, obs: torch.Tensor, goal: torch.Tensor | None) -> torch.Tensor:
        """Raw ``obs (B, Do)`` and ``goal (B, Dg)`` -> normalized state ``(B, Do + Dg)``."""
        s = self.normalizer("obs").normalize(obs)
        if not self.goal_dim:
            return s
        if goal is None:
            raise ValueError(f"goal-conditioned agent (goal_dim={self.goal_dim}) needs a goal")
        return torch.cat([s, self.normalizer("goal").normalize(goal)], dim=-1)

    # ----- training ------------------------------------------------------------------------------------
    def transitions(self, batch: Mapping[str, torch.Tensor]) -> Transitions:
        """Validate a raw batch (TransitionDataset or SequenceDataset with ``next_obs``) and normalize it."""
        need = ("obs", "actions", "rewards", "next_obs", "terminals")
        missing = [k for k in need if k not in batch]
        if missing:
            hint = ""
            if "rewards" in missing:
                hint = " (offline RL needs a dataset with rewards)"
            elif "next_obs" in missing:
                hint = " (build batches with TransitionDataset or SequenceDataset(next_obs=True))"
            raise ValueError(f"batch is missing key(s) {missing}{hint}; got keys {sorted(batch)}")
        device = next(self.network.parameters()).device

        def step0(key: str, width: int | None) -> torch.Tensor:
            x = batch[key].to(device, torch.float32)
            x = x[:, 0] if x.ndim >= 2 and (width is None or x.ndim == 3) else x
            if width is not None and (x.ndim != 2 or x.shape[1] != width):
                raise ValueError(
                    f"batch {key!r} has shape {tuple(batch[key].shape)}; expected (B, 1, {width}) for "
                    f"{type(self).__name__} with {key.split('_')[0]} dimension {width}"
                )
            return x

        obs, nxt = step0("obs", self.obs_dim), step0("next_obs", self.obs_dim)
        actions = step0("actions", self.action_dim)
        rewards = step0("rewards", None).reshape(-1)
        done = step0("terminals", None).reshape(-1)
        goal = batch["goal"].to(device, torch.float32) if "goal" in batch else None
        if self.goal_dim and goal is None:
            raise ValueError(
                f"batch is missing key 'goal' (goal_dim={self.goal_dim}); got keys {sorted(batch)}"
            )
        if not (torch.isfinite(rewards).all() and torch.isfinite(actions).all()):
            raise ValueError("batch rewards or actions contain NaN or inf")
        hp = self.hparams
        return Transitions(
            self._state(obs, goal),
            self.normalizer("action").normalize(actions).clamp(-1.0, 1.0),
            rewards * hp["reward_scale"] + hp["reward_bias"],
            self._state(nxt, goal),
            done,
        )

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

    def q_detached(
        self, state: torch.Tensor, action: torch.Tensor, critic: TwinQ | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Twin Q (the online critic unless ``critic`` is given) with its weights cut from the graph:
        gradients reach ``action`` only."""
        critic = self.network.critic if critic is None else critic
        params = {k: v.detach() for k, v in critic.named_parameters()}
        return functional_call(critic, params, (state, action))

    def q_value(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """The target critic's ``min(Q1, Q2)`` ``(B,)`` of raw observations ``(B, Do [+ Dg])`` and raw actions
        ``(B, Da)``; gradients reach ``action`` only (a verifier for steering other policies)."""
        device = next(self.network.parameters()).device
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        action = torch.as_tensor(action, dtype=torch.float32, device=device)
        if action.ndim != 2 or action.shape[-1] != self.action_dim or len(action) != len(obs):
            raise ValueError(
                f"action must have shape ({len(obs)}, {self.action_dim}), got {tuple(action.shape)}"
            )
        o, g = self._split(obs)
        a = self.normalizer("action").normalize(action)
        q1, q2 = self.q_detached(self._state(o, g), a, self.network.critic_target)
        return torch.minimum(q1, q2)

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
    def _split(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        width = self.obs_dim + self.goal_dim
        if obs.shape[-1] != width:
            raise ValueError(
                f"observation has {obs.shape[-1]} features; expected {width}"
                + (f" ({self.obs_dim} state + {self.goal_dim} goal)" if self.goal_dim else "")
            )
        return obs[..., : self.obs_dim], (obs[..., self.obs_dim :] if self.goal_dim else None)

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

    def predict_chunk(
        self, obs_history: Any, *, noise: torch.Tensor | None = None, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Chunks of one action ``(B, 1, Da)`` for histories ``(B, To, D)`` (only the last step is used)."""
        if prefix is not None:
            raise ValueError(
                f"{type(self).__name__} acts one step at a time; prefix inpainting is not supported"
            )
        hist = obs_history if torch.is_tensor(obs_history) else torch.as_tensor(np.asarray(obs_history))
        if hist.ndim != 3:
            raise ValueError(f"obs_history must have shape (B, To, D), got {tuple(hist.shape)}")
        return self.select_actions(hist[:, -1], noise).unsqueeze(1)

    def act(self, obs: Any) -> np.ndarray:
        """One observation (state, then goal when the task has one) -> one action in [-1, 1]."""
        arr = as_observation(obs, (self.state_dim,))
        action = self.select_actions(torch.from_numpy(arr)[None])[0]
        return action.cpu().numpy().astype(np.float32)

    def reset(self, seed: int | None = None) -> None:
        """Start an episode (the agent is memoryless); ``seed`` reseeds the sampling generator."""
        if seed is not None:
            self.seed(seed)

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
