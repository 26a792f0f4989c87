"""TD3+BC (Fujimoto & Gu 2021), optionally with model-based value expansion through a world model
(DWM-TD3BC, Ding et al. 2024).

A deterministic tanh actor and twin critics on z-scored states. The critics learn TD3's target
``r + discount * min Q_target(s', pi_target(s') + clipped noise)``; every ``policy_delay`` steps the actor
minimizes ``-lambda Q1(s, pi(s)) + (pi(s) - a)^2`` with ``lambda = alpha / mean|Q|`` and the targets take
their Polyak step.

``expansion_horizon > 0`` with a ``world_model`` checkpoint replaces the bootstrap at ``s'`` by an
H-step imagined return of the target actor plus the target critic's value at the horizon
(``diffctl.world_models.expansion``). The model is loaded when training first needs it and is not part of
the saved agent; the saved config records its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from diffctl.core.persistence import agent_config, build_agent, read_agent_config, write_agent_dir
from diffctl.datasets.normalizer import Normalizer
from diffctl.nets import mlp
from diffctl.policies.offline_rl.critics import TwinQ, frozen_copy, polyak_update, td_target
from diffctl.policies.offline_rl.transition_agent import TransitionAgent, TransitionAgentConfig, Transitions
from diffctl.world_models.expansion import expanded_return, policy_rollout

VERSION = 1


@dataclass
class TD3BCConfig(TransitionAgentConfig):
    """Settings of ``TD3BC`` (the paper's defaults)."""

    section: ClassVar[str] = "TD3BC"

    critic_depth: int = 2
    """Hidden layers of the critics' MLPs (the paper's 256x2)."""
    hidden: int = 256
    """Width of the actor's MLP."""
    depth: int = 2
    """Hidden layers of the actor's MLP."""
    alpha: float = 2.5
    """Weight of the Q term against behaviour cloning (lambda = alpha / mean|Q|)."""
    policy_noise: float = 0.2
    """Standard deviation of the target policy smoothing noise (normalized actions)."""
    noise_clip: float = 0.5
    """The smoothing noise is clipped to +-noise_clip."""
    policy_delay: int = 2
    """The actor and the targets are updated every policy_delay critic updates."""
    world_model: str = ""
    """Checkpoint of a world model of the same task for value expansion (empty: none)."""
    expansion_horizon: int = 0
    """H imagined steps in the critic target (0: TD3+BC's one-step target)."""
    expansion_refinements: int = 1
    """Picard refinements of the imagined actions for segment models (DWM); unused by one-step models."""

    def validate(self) -> None:
        super().validate()
        for key in ("hidden", "depth", "policy_delay"):
            if getattr(self, key) < 1:
                raise ValueError(f"TD3BC {key} must be a positive integer, got {getattr(self, key)!r}")
        for key in ("alpha", "policy_noise", "noise_clip"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"TD3BC {key} must be >= 0, got {getattr(self, key)!r}")
        if self.expansion_horizon < 0 or self.expansion_refinements < 0:
            raise ValueError(
                "TD3BC expansion_horizon and expansion_refinements must be >= 0, got "
                f"{self.expansion_horizon} and {self.expansion_refinements}"
            )
        if self.expansion_horizon and not self.world_model:
            raise ValueError(
                f"TD3BC expansion_horizon={self.expansion_horizon} needs world_model=<checkpoint of a world "
                "model trained on the same task> (diffctl train task=... world_model=dwm)"
            )


class TD3BCNet(nn.Module):
    """Actor, twin critics, their frozen target copies and the count of critic updates."""

    def __init__(self, state_dim: int, action_dim: int, cfg: TD3BCConfig) -> None:
        super().__init__()
        self.actor = nn.Sequential(mlp(state_dim, action_dim, cfg.hidden, cfg.depth, "relu"), nn.Tanh())
        self.critic = TwinQ(state_dim, action_dim, cfg.critic_hidden, cfg.critic_depth, "relu")
        self.actor_target = frozen_copy(self.actor)
        self.critic_target = frozen_copy(self.critic)
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))  # saved: resume keeps the phase


class TD3BC(TransitionAgent):
    """See the module docstring."""

    config_class: ClassVar[type[TD3BCConfig]] = TD3BCConfig
    uses_sampler = False

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        *,
        normalizers: Mapping[str, Normalizer] | None = None,
        **settings: Any,
    ) -> None:
        self.config = cfg = TD3BCConfig.from_dict({"obs_dim": obs_dim, "action_dim": action_dim, **settings})
        self.obs_dim, self.action_dim, self.goal_dim = cfg.obs_dim, cfg.action_dim, cfg.goal_dim
        self.state_dim = self.obs_dim + self.goal_dim
        self.normalizers: dict[str, Normalizer] = dict(normalizers or {})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.network: nn.Module = TD3BCNet(self.state_dim, self.action_dim, cfg)
        self._world_model: Any = None
        self.seed(cfg.seed)

    # ----- training ------------------------------------------------------------------------------------
    def grad_groups(self) -> dict[str, list[nn.Parameter]]:
        net = self.network
        return {"actor": list(net.actor.parameters()), "critic": list(net.critic.parameters())}

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Critic loss every call; actor loss and target step every ``policy_delay``-th training call (on the
        others the actor's parameters get no gradient at all, so the optimizer leaves them alone)."""
        training = self.network.training and torch.is_grad_enabled()
        tr = self.transitions(batch)
        loss, info = self.critic_loss(tr)
        updates = self.network.updates
        if not training or int(updates) % self.config.policy_delay == 0:
            actor_loss, actor_info = self.actor_loss(tr)
            loss, info = loss + actor_loss, {**info, **actor_info}
            if training:
                polyak_update(self.network.actor_target, self.network.actor, self.config.tau)
                polyak_update(self.network.critic_target, self.network.critic, self.config.tau)
        if training:
            updates += 1
        return loss, {**info, "loss": float(loss.detach())}

    def target_action(self, state: torch.Tensor) -> torch.Tensor:
        """The target actor's normalized action with TD3's clipped smoothing noise."""
        cfg = self.config
        action = self.network.actor_target(state)
        noise = (torch.randn_like(action) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
        return (action + noise).clamp(-1.0, 1.0)

    def bootstrap(self, state: torch.Tensor) -> torch.Tensor:
        """``min Q_target(s, pi_target(s) + noise)`` of normalized states ``(B,)``."""
        return self.network.critic_target.q_min(state, self.target_action(state))

    def critic_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            expand = self.config.expansion_horizon > 0
            future = self.expanded_value(tr.s2) if expand else self.bootstrap(tr.s2)
            target = td_target(tr.r, tr.done, future, self.config.discount)
        q1, q2 = self.network.critic(tr.s, tr.a)
        loss = ((q1 - target) ** 2).mean() + ((q2 - target) ** 2).mean()
        return loss, {"critic_loss": float(loss.detach()), "q_mean": float(q1.detach().mean())}

    def actor_loss(self, tr: Transitions) -> tuple[torch.Tensor, dict[str, float]]:
        pi = self.network.actor(tr.s)
        q = self.q_detached(tr.s, pi)[0]
        lam = self.config.alpha / q.abs().mean().detach().clamp(min=1e-6)
        bc = ((pi - tr.a) ** 2).mean()
        return -lam * q.mean() + bc, {"actor_bc": float(bc.detach()), "actor_lambda": float(lam)}

    # ----- value expansion -----------------------------------------------------------------------------
    def world_model(self) -> Any:
        """The value-expansion world model (loaded from ``config.world_model`` on first use)."""
        if self._world_model is None:
            self.attach_world_model(load_world_model(self.config.world_model, self))
        return self._world_model

    def attach_world_model(self, model: Any) -> None:
        """Expand values through ``model`` (any ``WorldModel`` of this task and dimensions) instead of
        loading ``config.world_model``."""
        check_world_model(model, self, self.config.world_model or type(model).__name__)
        self._world_model = model

    @torch.no_grad()
    def expanded_value(self, state: torch.Tensor) -> torch.Tensor:
        """``G(s)`` of normalized states ``(B,)`` in the critic's reward units: the target actor imagined
        ``expansion_horizon`` steps ahead in the world model, then the target critic's bootstrap."""
        cfg = self.config
        goal = state[:, self.obs_dim :]

        def actor(raw: torch.Tensor) -> torch.Tensor:
            s = self._imagined_state(raw, goal.repeat_interleave(len(raw) // len(goal), dim=0))
            return self.normalizer("action").unnormalize(self.network.actor_target(s))

        out = policy_rollout(self.world_model(), self.raw_state(state), actor, cfg.expansion_horizon,
                             cfg.expansion_refinements)  # fmt: skip
        final = self._imagined_state(out["observations"][:, -1], goal)
        rewards = self.scale_rewards(out["rewards"].to(state))
        return expanded_return(rewards, out["terminals"].to(state), self.bootstrap(final), cfg.discount)

    def _imagined_state(self, raw: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Normalized state of an imagined raw state, with the true (normalized) goal in place of the
        model's copy of it."""
        s = self.normalizer("obs").normalize(raw[:, : self.obs_dim].to(goal))
        return torch.cat([s, goal], dim=-1) if self.goal_dim else s

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_world_model"] = None  # reloaded from its path when needed, never pickled with the agent
        return state

    # ----- acting --------------------------------------------------------------------------------------
    @torch.no_grad()
    def select_actions(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Raw observations ``(B, Do [+ Dg])`` -> the actor's raw actions ``(B, Da)`` (deterministic)."""
        if noise is not None:
            raise ValueError("TD3BC acts deterministically; it takes no noise")
        device = next(self.network.parameters()).device
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        if not torch.isfinite(obs).all():
            raise ValueError("observation contains NaN or inf")
        return self.normalizer("action").unnormalize(self.network.actor(self.normalized_state(obs)))

    @torch.no_grad()
    def state_value(self, obs: torch.Tensor) -> torch.Tensor:
        """``min Q_target(s, pi(s))`` ``(B,)`` of raw observations ``(B, Do [+ Dg])``, in the units of raw
        rewards (the reward scale and bias undone): a terminal value for planning through a world model."""
        obs = torch.as_tensor(obs, dtype=torch.float32, device=next(self.network.parameters()).device)
        state = self.normalized_state(obs)
        q = self.network.critic_target.q_min(state, self.network.actor(state))
        cfg = self.config
        return (q - cfg.reward_bias / (1.0 - cfg.discount)) / cfg.reward_scale

    # ----- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_agent_dir(path, agent_config(self, VERSION), self.network.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> TD3BC:
        if overrides:
            raise ValueError(f"TD3BC.load takes no overrides (it has no sampler), got {sorted(overrides)}")
        config, state = read_agent_config(path, cls.__name__, VERSION, ("hyperparameters", "normalizers"))
        return build_agent(cls, path, config, state)


def load_world_model(path: str, agent: TransitionAgent) -> Any:
    """The world model saved at ``path`` (in eval mode), refused with a clear error when it is missing or
    does not fit ``agent`` (``check_world_model``)."""
    from diffctl.core.registry import load

    if not Path(path).is_dir():
        raise ValueError(
            f"{type(agent).__name__}.world_model: no checkpoint directory at {path!r} (train one with "
            "diffctl train task=<same task> world_model=dwm)"
        )
    model = load(path)
    check_world_model(model, agent, path)
    model.network.eval()
    return model


def check_world_model(model: Any, agent: TransitionAgent, name: Any) -> None:
    """Refuse a ``model`` that is not a world model, or imagines another task or other dimensions than
    ``agent``'s (``name`` labels it in the error)."""
    if not callable(getattr(model, "rollout", None)):
        raise ValueError(f"{name} holds a {type(model).__name__}, not a world model")
    if (model.state_dim, model.action_dim) != (agent.state_dim, agent.action_dim):
        raise ValueError(
            f"world model {name} imagines states of {model.state_dim} and actions of {model.action_dim} "
            f"dimensions; {type(agent).__name__} has {agent.state_dim} and {agent.action_dim}"
        )
    task = getattr(model, "task", None)
    if agent.task and task and agent.task != task:
        raise ValueError(f"world model {name} was trained on task {task!r}, the agent on {agent.task!r}")
