"""The ``Planner`` interface: ``plan(obs, goal) -> Plan`` and an ``act`` that executes and tracks plans.

A planner samples whole state(-action) trajectories of ``horizon`` steps from the current state and then
acts along the best one: it replans every ``replan_every`` steps (0: only when the plan is used up) or as
soon as the observed state leaves the planned one by more than ``replan_threshold`` (normalized units).
Planners share the policies' artifact format (``config.json`` + ``model.safetensors``), ``SamplerConfig``,
``seed`` / ``reset`` and the ``network`` / ``loss`` pair the ``Trainer`` trains, so ``dc.load``,
``dc.evaluate`` and ``diffctl train`` treat them like policies.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from diffctl.core.config import Config, Configurable
from diffctl.core.persistence import agent_config, build_agent, read_agent_config, write_agent_dir
from diffctl.core.sampler import SamplerConfig, refuse_fused
from diffctl.core.seeding import SeededSampler
from diffctl.datasets.normalizer import Normalizer
from diffctl.planners.plan import Plan, shift_trajectory
from diffctl.planners.runner import PlanRunner

__all__ = ["Plan", "Planner", "PlannerConfig", "shift_trajectory"]

VERSION = 1
EDM_NOISE_SCALE = 250.0
TRACKING_MODES = ("auto", "plan", "pd", "inverse_dynamics")


class ScaledNoiseNet(nn.Module):
    """A backbone called with EDM's ``c_noise = ln(sigma) / 4`` stretched to the timestep range it embeds."""

    def __init__(self, backbone: nn.Module, scale: float = EDM_NOISE_SCALE) -> None:
        super().__init__()
        self.backbone, self.scale = backbone, scale

    def forward(
        self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.backbone(x, c_noise * self.scale, cond)


def clean_conditioned(
    denoiser: Callable[..., torch.Tensor], mask: torch.Tensor, known: torch.Tensor
) -> Callable[..., torch.Tensor]:
    """``D(x, sigma, cond)`` that always sees the conditioned entries clean (Diffuser's conditioning).

    Planners train and sample this way: the current state (and goal) enter the network noise-free at every
    noise level, which conditions far more strongly than noised replacement alone.
    """

    def denoise(x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return denoiser(torch.where(mask, known.to(x.dtype), x), sigma, cond)

    return denoise


def check_positive(owner: str, **values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner} {name} must be a positive integer, got {value!r}")


@dataclass
class PlannerConfig(Config):
    """Settings every planner shares: dimensions, the denoiser's EDM settings and plan execution."""

    section: ClassVar[str] = "Planner"

    obs_dim: int
    """Observation features: the state, then the goal when the task has one (read off the data)."""
    action_dim: int
    """Action features (read off the data)."""
    goal_dim: int = 0
    """Goal features at the end of the observation."""
    horizon: int = 64
    """Planned steps (the training window)."""
    state_dim: int | None = None
    """State features (None: ``obs_dim - goal_dim``)."""
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    """Options of the denoiser backbone."""
    sigma_data: float = 0.5
    """EDM data standard deviation."""
    p_mean: float = -1.2
    """EDM training noise: ln sigma ~ N(p_mean, p_std^2)."""
    p_std: float = 1.2
    """EDM training noise spread."""
    discount: float = 0.99
    """Discount of the returns-to-go the planner models."""
    n_plans: int = 1
    """Plans sampled per decision (the best is executed)."""
    replan_every: int = 0
    """Steps between replans (0: only when the plan is used up)."""
    replan_threshold: float | None = None
    """Replan as soon as the state leaves the plan by more than this (normalized units)."""
    tracking: Literal["auto", "plan", "pd", "inverse_dynamics"] = "auto"
    """How plans become actions: the planned actions, a PD law on the next waypoint, or inverse dynamics."""
    kp: float = 1.0
    """PD tracking: gain on the position error."""
    kd: float = 1.0
    """PD tracking: gain on the velocity error."""
    goal_hold: float | None = None
    """Within this distance of the goal (raw units) steer to the goal at rest with the PD law instead of
    planning: Diffuser's end-of-plan rule on Maze2D, which keeps a reached goal held (None: always plan)."""
    seed: int = 0
    """Seed of the networks' initial weights."""

    def validate(self) -> None:
        name = self.section
        for key in ("obs_dim", "action_dim", "horizon", "n_plans"):
            if getattr(self, key) < 1:
                raise ValueError(f"{name} {key} must be a positive integer, got {getattr(self, key)!r}")
        if self.goal_dim < 0:
            raise ValueError(f"{name} goal_dim must be an integer >= 0, got {self.goal_dim!r}")
        if self.horizon < 2:
            raise ValueError(f"{name} horizon must be >= 2 (a plan needs a next state), got {self.horizon}")
        if self.state_dim is None:
            self.state_dim = self.obs_dim - self.goal_dim
        if not 1 <= self.state_dim <= self.obs_dim:
            raise ValueError(
                f"{name} state_dim must be in [1, obs_dim={self.obs_dim}], got {self.state_dim!r}"
            )
        if self.goal_dim > self.state_dim:
            raise ValueError(f"{name} goal_dim={self.goal_dim} exceeds state_dim={self.state_dim}")
        if self.replan_every < 0:
            raise ValueError(f"{name} replan_every must be an integer >= 0, got {self.replan_every!r}")
        if self.replan_threshold is not None and not self.replan_threshold > 0:
            raise ValueError(f"{name} replan_threshold must be None or > 0, got {self.replan_threshold!r}")
        if self.goal_hold is not None and not (self.goal_hold > 0 and self.goal_dim):
            raise ValueError(
                f"{name} goal_hold must be None or > 0 on a goal task (goal_dim > 0), got "
                f"goal_hold={self.goal_hold!r} with goal_dim={self.goal_dim}"
            )
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"{name} discount must be in [0, 1], got {self.discount}")


class Planner(Configurable, SeededSampler, ABC):
    """Base of trajectory planners: a typed ``config_class``, a ``network`` built by ``build_network``
    (seeded by ``config.seed``), ``plan``, ``loss`` and ``track_action``; a ``PlanRunner`` executes plans."""

    network: nn.Module
    config_class: ClassVar[type[PlannerConfig]] = PlannerConfig
    INFERENCE_KEYS: ClassVar[tuple[str, ...]] = (
        "n_plans", "replan_every", "replan_threshold", "tracking", "goal_hold",
    )  # fmt: skip

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
        self.state_dim, self.horizon = int(cfg.state_dim), cfg.horizon
        self.sampler = (
            sampler if isinstance(sampler, SamplerConfig) else SamplerConfig.from_dict(sampler or {})
        )
        refuse_fused(self.sampler, type(self).__name__)
        self.normalizers: dict[str, Normalizer] = dict(normalizers or {})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.network = self.build_network()
        uses_pd = self.tracking_mode() == "pd" or cfg.goal_hold is not None
        if uses_pd and self.state_dim < 2 * self.action_dim:
            raise ValueError(
                f"tracking 'pd' and goal_hold need states laid out [position, velocity] with state_dim >= "
                f"2 * action_dim = {2 * self.action_dim}, got state_dim={self.state_dim}"
            )
        self.seed(self.sampler.seed)
        self.reset()

    @abstractmethod
    def build_network(self) -> nn.Module:
        """The trainable networks, built from ``config`` (the global RNG is seeded and restored around it)."""

    # ----- observations and normalizers ----------------------------------------------------------------
    def normalizer(self, key: str) -> Normalizer:
        if key not in self.normalizers:
            raise ValueError(
                f"{type(self).__name__} has no {key!r} normalizer; call fit_normalizers(...) before use"
            )
        return self.normalizers[key]

    def _device(self) -> torch.device:
        return next(self.network.parameters()).device

    def split_obs(self, obs: Any, goal: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw observations ``(D,)`` or ``(B, D)`` -> states ``(B, Ds)`` and goals ``(B, Dg)`` or None.

        ``D`` is ``state_dim`` or ``obs_dim`` (then the goal is read from the ``goal_dim`` features after the
        state); an explicit ``goal`` wins over the one inside the observation.
        """
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32) if not torch.is_tensor(obs) else obs)
        x = x.to(self._device(), torch.float32)
        if x.ndim == 1:
            x = x[None]
        widths = sorted({self.state_dim, self.obs_dim})
        if x.ndim != 2 or x.shape[1] not in widths:
            raise ValueError(
                f"observation has shape {tuple(x.shape)}; expected (D,) or (B, D) with D in {widths}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("observation contains NaN or inf")
        state = x[:, : self.state_dim]
        g = None
        if goal is not None:
            g = torch.as_tensor(np.asarray(goal, dtype=np.float32) if not torch.is_tensor(goal) else goal)
            g = g.to(state.device, torch.float32)
            if not self.goal_dim or g.shape[-1] != self.goal_dim or g.ndim > 2:
                raise ValueError(
                    f"goal must have goal_dim={self.goal_dim} features per observation, "
                    f"got shape {tuple(g.shape)}"
                )
            g = g.reshape(-1, self.goal_dim)
            if g.shape[0] not in (1, x.shape[0]):
                raise ValueError(
                    f"goal must have goal_dim={self.goal_dim} features per observation, "
                    f"got shape {tuple(np.shape(goal))}"
                )
            if not bool(torch.isfinite(g).all()):
                raise ValueError("goal contains NaN or inf")
            g = g.expand(x.shape[0], -1)
        elif self.goal_dim and x.shape[1] >= self.state_dim + self.goal_dim:
            g = x[:, self.state_dim : self.state_dim + self.goal_dim]
        return state, g

    def fit_normalizers(
        self, obs: Any, actions: Any, goal: Any = None, mode: str = "limits", *, returns: Any = None
    ) -> None:
        """Fit state / action (/ goal / return) normalizers from raw arrays (last axis = features).

        ``returns`` are the dataset's discounted returns-to-go (one per step, with this planner's
        ``discount``); planners that model returns need them.
        """
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape[-1] < self.state_dim:
            raise ValueError(
                f"obs has {obs.shape[-1]} features; the planner needs state_dim={self.state_dim}"
            )
        self.normalizers = {
            "state": Normalizer.fit(obs[..., : self.state_dim], mode, name="states"),
            "action": Normalizer.fit(actions, mode, name="actions"),
        }
        if self.goal_dim and goal is not None:
            self.normalizers["goal"] = Normalizer.fit(goal, mode, name="goals")
        if returns is not None:
            r = np.asarray(returns, dtype=np.float64).reshape(-1, 1)
            self.normalizers["returns"] = Normalizer.fit(r, "limits", name="returns")
        elif self.uses_returns:
            raise ValueError(
                f"{type(self).__name__} models returns: fit_normalizers needs returns= (discounted "
                f"returns-to-go with discount {self.hparams['discount']})"
            )

    @property
    def uses_returns(self) -> bool:
        """Whether training needs batch ``rewards`` / ``returns`` and a ``returns`` normalizer."""
        return False

    def sigmas(self) -> torch.Tensor:
        """The Karras sigma grid of the current sampler settings (planners are EDM models)."""
        from diffctl.kernels import schedules

        cfg = self.sampler
        if cfg.schedule not in ("auto", "karras"):
            raise ValueError(
                f"planners sample on a Karras grid; sampler schedule {cfg.schedule!r} is not supported"
            )
        return schedules.karras(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).float()

    def initial(self, noise: torch.Tensor, init: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling start and grid: ``noise`` at ``sigma_max`` on the full grid, or (warm start) the
        normalized trajectory ``init`` re-noised to ``sampler.warm_start`` and only the grid below it."""
        sigmas = self.sigmas().to(noise.device)
        start = float(self.sampler.warm_start)
        if init is None or start <= 0 or start >= float(sigmas[0]):
            return noise * sigmas[0], sigmas
        init = torch.as_tensor(init).to(noise.device, torch.float32)
        if init.ndim == 2:
            init = init[None]
        n = self.hparams["n_plans"]
        if init.ndim != 3 or init.shape[1:] != noise.shape[1:] or init.shape[0] * n != noise.shape[0]:
            raise ValueError(
                f"init must be normalized trajectories (B, {noise.shape[1]}, {noise.shape[2]}) with "
                f"B * n_plans = {noise.shape[0]}, got {tuple(init.shape)}"
            )
        grid = torch.cat([sigmas.new_tensor([start]), sigmas[sigmas < start]])
        return init.repeat_interleave(n, 0) + start * noise, grid

    def _start(
        self,
        shape: tuple[int, int, int],
        noise: torch.Tensor | None,
        init: torch.Tensor | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``initial`` for ``shape`` normalized trajectories from ``noise`` (drawn from the planner's
        generator when None, else shape-checked)."""
        return self.initial(self.start_noise(shape, noise, device), init)

    def windows(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw batch -> states ``(B, H, Ds)``, actions ``(B, H, Da)``, valid-step mask ``(B, H)`` (bool)."""
        for key in ("obs", "actions"):
            if key not in batch:
                raise ValueError(f"batch is missing key {key!r}; got keys {sorted(batch)}")
        device = self._device()
        obs = torch.as_tensor(batch["obs"]).to(device, torch.float32)
        actions = torch.as_tensor(batch["actions"]).to(device, torch.float32)
        h = self.horizon
        if obs.ndim != 3 or obs.shape[1] != h or obs.shape[2] < self.state_dim:
            raise ValueError(
                f"batch 'obs' has shape {tuple(obs.shape)}; planners need whole windows (B, {h}, >= "
                f"{self.state_dim}): build the SequenceDataset with n_obs_steps = horizon = {h}"
            )
        if actions.shape != (obs.shape[0], h, self.action_dim):
            raise ValueError(
                f"batch 'actions' has shape {tuple(actions.shape)}; "
                f"expected ({obs.shape[0]}, {h}, {self.action_dim})"
            )
        mask = batch.get("obs_mask")
        mask = torch.ones(obs.shape[:2], dtype=torch.bool, device=device) if mask is None else mask
        mask = torch.as_tensor(mask).to(device).bool()
        if mask.shape != obs.shape[:2]:
            raise ValueError(
                f"batch 'obs_mask' has shape {tuple(mask.shape)}; expected {tuple(obs.shape[:2])}"
            )
        return obs[..., : self.state_dim], actions, mask

    def window_returns(self, batch: Mapping[str, Any], mask: torch.Tensor) -> torch.Tensor:
        """Normalized return-to-go from each window's first step, ``(B,)``."""
        from diffctl.planners.value import window_returns

        for key in ("rewards", "returns"):
            if key not in batch:
                raise ValueError(
                    f"{type(self).__name__} models returns but the batch has no {key!r} "
                    "(a dataset without rewards?)"
                )
        device = mask.device
        ret = window_returns(
            torch.as_tensor(batch["rewards"]).to(device, torch.float32),
            torch.as_tensor(batch["returns"]).to(device, torch.float32),
            mask,
            float(self.hparams["discount"]),
        )
        return self.normalizer("returns").normalize(ret[:, None])[:, 0]

    # ----- the planning interface ----------------------------------------------------------------------
    @abstractmethod
    def plan(self, obs: Any, goal: Any = None, *, init: torch.Tensor | None = None) -> Plan:
        """Sample ``n_plans`` trajectories per observation starting at its state, ranked best first;
        ``init`` (normalized ``(B, H, D)``) warm-starts sampling when ``sampler.warm_start > 0``."""

    @abstractmethod
    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of a raw batch of windows (``obs`` ``(B, H, D)``, ``actions`` ``(B, H, Da)``)."""

    @abstractmethod
    def track_action(self, plan: Plan, plan_norm: torch.Tensor, state: torch.Tensor, t: int) -> np.ndarray:
        """The action at step ``t`` of ``plan`` (its best plan's normalized states: ``plan_norm``) from the
        observed raw ``state`` ``(1, Ds)``."""

    def plan_options(self, previous: Plan | None) -> dict[str, Any]:
        """Extra ``plan`` keywords for the replan that follows ``previous`` in an episode (none here)."""
        return {}

    @property
    def plan_length(self) -> int:
        """Steps of the plan the agent executes (the horizon, unless a planner executes a shorter one)."""
        return self.horizon

    def tracking_mode(self) -> str:
        """``tracking`` with ``auto`` resolved by the subclass (see its docstring)."""
        return str(self.hparams["tracking"])

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: forget the current plan (a fresh ``PlanRunner``); ``seed`` reseeds sampling."""
        self.runner = PlanRunner(self)
        if seed is not None:
            self.seed(seed)

    @property
    def replans(self) -> int:
        """Plans sampled since ``reset``."""
        return self.runner.replans

    def act(self, obs: Any) -> np.ndarray:
        """One observation -> one action along the current best plan (``PlanRunner``)."""
        return self.runner.act(obs)

    def pd_toward(self, position: torch.Tensor, velocity: torch.Tensor, state: torch.Tensor) -> np.ndarray:
        """The PD law ``kp (p' - p) + kd (v' - v)`` from a raw ``state`` ``(1, Ds)`` of ``[p, v, ...]``."""
        p = self.action_dim
        s = state[0]
        a = self.config.kp * (position - s[:p]) + self.config.kd * (velocity - s[p : 2 * p])
        return a.cpu().numpy()

    def pd_action(self, plan: Plan, state: torch.Tensor, t: int) -> np.ndarray:
        """Steer to the plan's next waypoint with ``pd_toward``."""
        p = self.action_dim
        nxt = plan.states[0, 0, min(t + 1, self.plan_length - 1)]
        return self.pd_toward(nxt[:p], nxt[p : 2 * p], state)

    def holds_goal(self, state: torch.Tensor, goal: torch.Tensor | None) -> bool:
        """Whether ``goal_hold`` applies: raw ``state`` ``(1, Ds)`` lies within it of ``goal`` ``(1, Dg)``."""
        radius = self.config.goal_hold
        if radius is None or goal is None:
            return False
        dims = list(self.hparams.get("goal_dims") or range(self.goal_dim))
        return float((state[0, dims] - goal[0]).norm()) <= radius

    def hold_action(self, state: torch.Tensor, goal: torch.Tensor) -> np.ndarray:
        """``pd_toward`` the goal position at rest."""
        p = self.action_dim
        return self.pd_toward(goal[0, :p], torch.zeros_like(goal[0, :p]), state)

    # ----- persistence ---------------------------------------------------------------------------------
    def config_json(self) -> dict[str, Any]:
        """Everything needed to rebuild this planner (the content of ``config.json``)."""
        return agent_config(self, VERSION)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into the directory ``path`` atomically."""
        return write_agent_dir(path, self.config_json(), self.network.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> Planner:
        """Rebuild from a directory written by ``save``. Overrides are ``SamplerConfig`` fields or the
        inference keys ``INFERENCE_KEYS`` (e.g. ``n_plans``, ``replan_every``); anything else is an error."""
        config, state = read_agent_config(path, cls.__name__, VERSION)
        planner_overrides = {k: v for k, v in overrides.items() if k in cls.INFERENCE_KEYS}
        sampler_overrides = {k: v for k, v in overrides.items() if k not in cls.INFERENCE_KEYS}
        try:
            sampler = SamplerConfig.from_dict(config["sampler"]).replace(**sampler_overrides)
        except ValueError as err:
            raise ValueError(f"{err}; planner inference keys: {list(cls.INFERENCE_KEYS)}") from err
        return build_agent(cls, path, config, state, sampler, planner_overrides)
