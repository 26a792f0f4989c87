"""Inference-time steering of a trained chunk policy by a verifier (``diffctl.improve.verifiers``).

``SteeredPolicy(policy, verifier, method=..., n=...)`` acts like the policy (same history, same receding
horizon) but picks each chunk with the verifier:

- ``best_of_n``: sample ``n`` chunks from the same history (different noise), execute the best scored one.
- ``fk``: Feynman-Kac steering (``kernels.steering.fk_steer``): ``n`` particles through the policy's denoising
  chain, scored on their x0 prediction at every step and resampled by the difference potential at
  temperature ``lam``; the best final particle (or one drawn by weight) is executed.
- ``gradient``: value-gradient guidance (``kernels.guidance.GradientGuidance``) of a differentiable verifier
  at ``scale``, with the policy's own solver; with ``n > 1`` the best of the ``n`` guided chunks.

Each decision's cost is kept: ``last_cost`` holds its network evaluations per observation (``nfe``, counted
at the network) and verifier calls; ``cost`` sums them over every decision since the agent was built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from diffctl.core.config import Config
from diffctl.core.modules import eval_mode
from diffctl.improve.verifiers import Verifier
from diffctl.kernels.guidance import GradientGuidance
from diffctl.kernels.samplers import sample
from diffctl.kernels.steering import best_of_n, fk_steer, select
from diffctl.policies.diffusion import history_tensor
from diffctl.policies.runner import ChunkRunner

__all__ = ["SteeredPolicy", "SteeringConfig"]


@dataclass
class SteeringConfig(Config):
    """How a ``SteeredPolicy`` spends extra compute on each chunk."""

    section: ClassVar[str] = "steering"

    method: Literal["best_of_n", "fk", "gradient"] = "best_of_n"
    """best_of_n: rank n samples; fk: particles resampled along the chain; gradient: value-gradient
    guidance."""
    n: int = 16
    """Candidates (best_of_n, gradient) or particles (fk) per decision."""
    lam: float = 10.0
    """fk: temperature of the tilt ``exp(lam * score)`` (in 1 / the verifier's units)."""
    eta: float = 1.0
    """fk: DDIM stochasticity of the particle steps (1: DDPM; 0: deterministic, so resampled duplicates stay
    identical)."""
    ess_threshold: float = 0.5
    """fk: resample a group when its effective sample size drops below this fraction of n."""
    selection: Literal["argmax", "sample"] = "argmax"
    """fk: execute the best final particle, or one drawn by weight (a sample of the tilted policy)."""
    scale: float = 0.1
    """gradient: guidance scale on the verifier's gradient in normalized action units."""
    guide_sigma_min: float = 0.05
    """gradient: no guidance at noise levels at or below this (the last, nearly clean steps)."""

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"steering.n must be >= 1, got {self.n}")
        if self.lam < 0 or self.eta < 0 or self.scale < 0:
            raise ValueError("steering.lam, steering.eta and steering.scale must be >= 0")
        if not 0.0 <= self.ess_threshold <= 1.0:
            raise ValueError(f"steering.ess_threshold must lie in [0, 1], got {self.ess_threshold}")


def _repeat(hist: Any, n: int) -> Any:
    """Each history of the batch ``n`` times in a row (a dict of camera histories key by key)."""
    if isinstance(hist, dict):
        return {k: v.repeat_interleave(n, dim=0) for k, v in hist.items()}
    return hist.repeat_interleave(n, dim=0)


def _current(hist: Any) -> Any:
    """The last step of a history batch: what the verifier sees as the observation."""
    if isinstance(hist, dict):
        return {k: v[:, -1] for k, v in hist.items()}
    return hist[:, -1]


class _RowCounter:
    """Counts the rows the network evaluates (one per sample per call): NFE summed over the batch."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.rows = 0
        self.handle = network.register_forward_pre_hook(self._count)

    def _count(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.rows += int(args[0].shape[0])

    def close(self) -> None:
        self.handle.remove()


class SteeredPolicy:
    """A chunk policy whose chunks are chosen by a verifier; see the module docstring."""

    def __init__(
        self,
        policy: Any,
        verifier: Verifier,
        config: SteeringConfig | None = None,
        *,
        seed: int | None = None,
        **settings: Any,
    ) -> None:
        if config is not None and settings:
            raise ValueError("pass a SteeringConfig or keyword settings, not both")
        self.config = config or SteeringConfig.from_dict(settings)
        for name in ("predict_chunk", "check_obs", "conditioned_denoiser"):
            if not callable(getattr(policy, name, None)):
                raise ValueError(
                    f"{type(policy).__name__} has no {name}(): steering needs a diffusion chunk policy"
                )
        if getattr(getattr(policy, "sampler", None), "fused", False):
            raise ValueError(
                "steering runs the policy's eager sampler (it counts and steers network calls); load "
                "the policy without fused=True"
            )
        if not callable(verifier):
            raise ValueError(
                f"the verifier must be callable (obs, actions) -> scores, got {type(verifier).__name__}"
            )
        if self.config.method != "best_of_n" and not getattr(policy, "samples_from_noise", False):
            raise ValueError(
                f"steering method {self.config.method!r} rebuilds the policy's chain from noise; "
                f"{type(policy).__name__} does not sample that way (use best_of_n)"
            )
        if self.config.method == "gradient" and not getattr(verifier, "differentiable", False):
            raise ValueError(
                "steering method 'gradient' needs a differentiable verifier; "
                f"{type(verifier).__name__} is not (use best_of_n or fk)"
            )
        task, vtask = getattr(policy, "task", None), getattr(verifier, "task", None)
        if task and vtask and task != vtask:
            raise ValueError(f"the policy was trained on task {task!r}, the verifier on {vtask!r}")
        self.policy, self.verifier = policy, verifier
        self.task = task
        for name in ("obs_dim", "action_dim", "goal_dim", "horizon", "n_obs_steps", "n_action_steps"):
            setattr(self, name, getattr(policy, name))
        self.last_cost: dict[str, float] = {}
        self.cost = {"decisions": 0, "nfe": 0.0, "verifier_calls": 0.0}
        self.reset(seed)

    # ----- the agent interface --------------------------------------------------------------------------
    def seed(self, seed: int | None) -> None:
        """Reseed the policy's sampling generator (all steering randomness is drawn from it)."""
        self.policy.seed(seed)

    def reset(self, seed: int | None = None) -> None:
        self.runner = ChunkRunner(self)
        if seed is not None:
            self.seed(seed)

    def check_obs(self, obs: Any) -> Any:
        return self.policy.check_obs(obs)

    def act(self, obs: Any) -> np.ndarray:
        return self.runner.act(obs)

    # ----- choosing a chunk ---------------------------------------------------------------------------
    @torch.no_grad()
    def predict_chunk(
        self, obs_history: Any, *, noise: Any = None, prefix: Any = None, init: Any = None
    ) -> torch.Tensor:
        """One steered raw chunk ``(B, H, Da)`` per history of the batch."""
        if noise is not None or prefix is not None or init is not None:
            raise ValueError(
                "SteeredPolicy draws its own noise; noise, prefix and warm starts are not supported"
            )
        p = self.policy
        hist = history_tensor(p, obs_history)
        bsz = len(hist["observations"] if isinstance(hist, dict) else hist)
        n, method = self.config.n, self.config.method
        rep = _repeat(hist, n)
        obs = _current(rep)
        counter = _RowCounter(p.network)
        try:
            with eval_mode(p.network):
                if method == "best_of_n":
                    chunks = p.predict_chunk(rep)
                    scores, calls = self.score(obs, chunks), 1
                    rows = best_of_n(scores, n)
                elif method == "fk":
                    chunks, rows, calls = self._fk(rep, obs)
                else:
                    chunks = self._guided(rep, obs)
                    scores, calls = self.score(obs, chunks), 1
                    rows = best_of_n(scores, n)
        finally:
            counter.close()
        self.last_cost = {"nfe": counter.rows / bsz, "verifier_calls": calls * n}
        self.cost["decisions"] += 1
        self.cost["nfe"] += self.last_cost["nfe"]
        self.cost["verifier_calls"] += self.last_cost["verifier_calls"]
        return chunks[rows]

    def score(self, obs: Any, chunks: torch.Tensor) -> torch.Tensor:
        """The verifier's scores (N,) of raw chunks, on the actions from the current step on."""
        scores = torch.as_tensor(self.verifier(obs, chunks[:, self.n_obs_steps - 1 :]))
        if scores.shape != (len(chunks),):
            raise ValueError(f"the verifier returned shape {tuple(scores.shape)}, expected ({len(chunks)},)")
        return scores.float()

    def _raw(self, x0: torch.Tensor) -> torch.Tensor:
        return self.policy.normalizer("action").unnormalize(x0.clamp(-1.0, 1.0))

    def _fk(self, rep: Any, obs: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
        p, cfg = self.policy, self.config
        denoise = p.conditioned_denoiser(rep)
        sigmas = p.sigmas()
        shape = (len(obs["observations"] if isinstance(obs, dict) else obs), p.horizon, p.action_dim)
        x = torch.randn(shape, generator=p.generator) * sigmas[0]
        res = fk_steer(
            denoise, x, sigmas, lambda x0: self.score(obs, self._raw(x0)), particles=cfg.n, lam=cfg.lam,
            eta=cfg.eta, ess_threshold=cfg.ess_threshold, generator=p.generator,
        )  # fmt: skip
        rows = select(res.log_weights, res.rewards, cfg.selection, p.generator)
        return self._raw(res.x), rows, res.reward_calls

    def _guided(self, rep: Any, obs: Any) -> torch.Tensor:
        p, cfg = self.policy, self.config
        start = self.n_obs_steps - 1

        def value(x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.verifier(obs, self._raw(x0)[:, start:])

        guided = GradientGuidance(
            p.conditioned_denoiser(rep), value, cfg.scale, sigma_min=cfg.guide_sigma_min
        )
        sigmas = p.sigmas()
        shape = (len(obs["observations"] if isinstance(obs, dict) else obs), p.horizon, p.action_dim)
        x = torch.randn(shape, generator=p.generator) * sigmas[0]
        x0 = sample(guided, x, sigmas, solver=p.sampler.solver, generator=p.generator, **p.sampler.options)
        return self._raw(x0)
