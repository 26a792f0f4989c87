"""``PlanRunner``: the act-time state of a planner (the plan being tracked), apart from the planner model.

The runner plans on the first step and whenever the plan is used up, ``replan_every`` steps have passed or
the observed state left the plan by more than ``replan_threshold`` (normalized units), warm-starting from the
shifted old plan when the sampler asks for it, and turns the plan into actions with the planner's
``track_action``. Each replan gets the planner's ``plan_options`` for the previous plan (the coarse-to-fine
planner continues its kept coarse plans). Within the planner's ``goal_hold`` distance of the goal it plans
nothing and holds the goal (``hold_action``). It uses only the planner's public methods.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffctl.core.observations import as_observation
from diffctl.planners.plan import Plan, shift_trajectory


class PlanRunner:
    """Receding-horizon execution of a planner's best plan."""

    def __init__(self, planner: Any) -> None:
        self.planner = planner
        self.plan: Plan | None = None
        self.plan_norm: torch.Tensor | None = None
        self.t = 0
        self.replans = 0

    def needs_plan(self, state_norm: torch.Tensor) -> bool:
        """Whether to plan again at this step (see the module docstring)."""
        if self.plan is None or self.plan_norm is None:
            return True
        cfg = self.planner.config
        every = cfg.replan_every
        if self.t >= self.planner.plan_length - 1 or (every and self.t >= every):
            return True
        if cfg.replan_threshold is not None:
            return float((state_norm[0] - self.plan_norm[self.t]).norm()) > cfg.replan_threshold
        return False

    @torch.no_grad()
    def act(self, obs: Any) -> np.ndarray:
        """One observation -> one action along the current best plan, replanning as configured."""
        p = self.planner
        arr = as_observation(obs, (p.state_dim, p.obs_dim))
        state, goal = p.split_obs(arr)
        if p.holds_goal(state, goal):
            self.plan, self.plan_norm = None, None  # leaving the goal plans afresh
            return self._clip(p.hold_action(state, goal))
        state_norm = p.normalizer("state").normalize(state)
        if self.needs_plan(state_norm):
            init = None
            if p.sampler.warm_start > 0 and self.plan is not None and self.plan.trajectory is not None:
                init = shift_trajectory(self.plan.trajectory[:, 0], self.t)
            self.plan = p.plan(arr, init=init, **p.plan_options(self.plan))
            self.plan_norm = p.normalizer("state").normalize(self.plan.states[0, 0])
            self.t = 0
            self.replans += 1
        action = p.track_action(self.plan, self.plan_norm, state, self.t)
        self.t += 1
        return self._clip(action)

    def _clip(self, action: Any) -> np.ndarray:
        return np.clip(np.asarray(action, dtype=np.float32).reshape(self.planner.action_dim), -1.0, 1.0)
