"""Verifiers: score candidate action chunks from the current observation, higher is better.

A verifier is called as ``verifier(obs, actions) -> (B,)`` with ``obs`` the raw current observation
``(B, D)`` (state then goal, as the policy sees it; for camera policies the dict of the current step's
entries) and ``actions`` the raw actions ``(B, T, Da)`` the agent would execute from now on.
``differentiable`` says whether gradients flow from the score back to ``actions`` (value-gradient guidance).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffctl.world_models.base import WorldModel
from diffctl.world_models.planning import imagined_return

__all__ = ["FunctionVerifier", "QVerifier", "Verifier", "WorldModelVerifier"]


class Verifier:
    """Base of the verifiers: ``__call__(obs, actions) -> (B,)`` scores."""

    differentiable: bool = False
    task: str | None = None

    def __call__(self, obs: Any, actions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FunctionVerifier(Verifier):
    """A user function ``fn(obs, actions) -> (B,)``; ``differentiable=True`` when it is written in torch ops
    that keep the graph."""

    def __init__(self, fn: Callable[[Any, torch.Tensor], Any], *, differentiable: bool = False) -> None:
        if not callable(fn):
            raise ValueError(f"FunctionVerifier needs a callable, got {type(fn).__name__}")
        self.fn, self.differentiable = fn, bool(differentiable)

    def __call__(self, obs: Any, actions: torch.Tensor) -> torch.Tensor:
        out = self.fn(obs, actions)
        return out if torch.is_tensor(out) else torch.as_tensor(out, dtype=torch.float32)


class WorldModelVerifier(Verifier):
    """Imagined return of the actions under a world model: ``sum_t discount^t r_t`` over the first ``steps``
    actions (all by default), with ``r_t`` the model's predicted reward or ``reward(state after action t)``
    when given (e.g. ``diffctl.envs.progress.goal_progress``), plus ``discount^T value(s_T)`` with a
    ``value`` function of the last imagined state. The model's state must be the policy's observation."""

    def __init__(
        self,
        world_model: WorldModel,
        *,
        reward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        value: Callable[[torch.Tensor], torch.Tensor] | None = None,
        discount: float = 1.0,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not 0 < float(discount) <= 1:
            raise ValueError(f"discount must lie in (0, 1], got {discount}")
        if steps is not None and int(steps) < 1:
            raise ValueError(f"steps must be >= 1 (or None for the whole chunk), got {steps}")
        self.world_model, self.reward, self.value = world_model, reward, value
        self.discount, self.steps, self.generator = float(discount), steps, generator
        self.task = world_model.task

    def __call__(self, obs: Any, actions: torch.Tensor) -> torch.Tensor:
        state = obs["observations"] if isinstance(obs, dict) else obs
        if state.shape[-1] != self.world_model.state_dim:
            raise ValueError(
                f"the world model's state has {self.world_model.state_dim} features, the observation "
                f"{state.shape[-1]}: a WorldModelVerifier needs a model of the policy's whole observation"
            )
        a = actions[:, : self.steps] if self.steps else actions
        return imagined_return(self.world_model, state, a, discount=self.discount, reward=self.reward,
                               value=self.value, generator=self.generator)  # fmt: skip


class QVerifier(Verifier):
    """An offline-RL agent's critic on the first action: ``min(Q1, Q2)(obs, actions[:, 0])``, differentiable
    in the action (its weights are cut from the graph)."""

    differentiable = True

    def __init__(self, agent: Any) -> None:
        if not callable(getattr(agent, "q_value", None)):
            raise ValueError(
                f"{type(agent).__name__} has no critic (q_value): a QVerifier needs an offline-RL agent"
            )
        self.agent = agent
        self.task = getattr(agent, "task", None)

    def __call__(self, obs: Any, actions: torch.Tensor) -> torch.Tensor:
        state = obs["observations"] if isinstance(obs, dict) else obs
        return self.agent.q_value(state, actions[:, 0])
