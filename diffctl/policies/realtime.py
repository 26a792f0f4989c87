"""Training-free real-time wrappers for any ``DiffusionPolicy``: RTI warm start and real-time chunking.

``RealTimePolicy`` wraps a trained chunk policy and changes only how chunks are sampled and switched:

- **RTI warm start** (``warm_sigma > 0``): the previous chunk, shifted by the ticks executed since it was
  planned (last action repeated), is re-noised to ``warm_sigma`` and finished with ``warm_steps`` solver
  steps; the first chunk after ``reset`` is sampled cold with the policy's own sampler.
- **Real-time chunking** (``seam="rtc"``): inference is assumed to take ``delay`` ticks, so the next chunk is
  requested ``delay`` ticks before the current one runs out and sampled with the actions that will have
  executed by then inpainted with weight 1, and the rest of the previous chunk's overlap with weights decaying
  to 0 (``kernels.guidance.prefix_weights``). ``"inpaint"`` keeps only the weight-1 part, ``"blend"``
  cross-fades an independent new chunk into the old one, ``"naive"`` switches to it (baselines).

The simulation is synchronous: during the ``delay`` ticks the old chunk's queued actions are executed, as a
controller does while the next chunk is computed. ``stats()`` reports NFE per tick and the action jump at
chunk seams.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffctl.atomic import write_json
from diffctl.kernels import schedules
from diffctl.kernels.guidance import prefix_weights
from diffctl.kernels.samplers import sample
from diffctl.policies.base import CONFIG_FILE, Policy, eval_mode
from diffctl.policies.diffusion import history_tensor, prefix_tensor, split_history
from diffctl.policies.fused import FusedInputs, run_fused_chunk
from diffctl.policies.runner import push_observation, stack_history

SEAMS = ("naive", "blend", "inpaint", "rtc")
VERSION = 1

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def conditioned_denoiser(policy: Any, obs_history: Any) -> Denoise:
    """``denoise(x, sigma)`` on normalized chunks, conditioned on raw histories (goal guidance included)."""
    return policy.conditioned_denoiser(history_tensor(policy, obs_history))


def shift_chunk(chunk: torch.Tensor, shift: int) -> torch.Tensor:
    """Drop the first ``shift`` steps of ``(B, H, Da)`` chunks and repeat the last action to keep length H."""
    if shift <= 0:
        return chunk
    h = chunk.shape[1]
    shift = min(shift, h - 1)
    return torch.cat([chunk[:, shift:], chunk[:, -1:].expand(-1, shift, -1)], dim=1)


def warm_sigmas(sigma: float, steps: int, sigma_min: float = 0.002, rho: float = 7.0) -> torch.Tensor:
    """RTI grid: ``steps`` levels from ``sigma`` down (Karras spacing), then 0."""
    if sigma <= sigma_min:
        raise ValueError(f"warm_sigma must exceed sigma_min={sigma_min}, got {sigma}")
    return schedules.karras(steps, sigma_min, sigma, rho).float()


class RealTimePolicy(Policy):
    """Wrap a chunk policy with RTI warm starts and/or real-time chunking (see the module docstring).

    ``replan_every``: ticks between chunk starts (default: the policy's ``n_action_steps``);
    ``delay``: inference delay in ticks (``replan_every + delay <= H - To + 1``); ``decay_end``: chunk index
    where RTC weights reach 0 (default: the end of the previous chunk's overlap).
    """

    def __init__(
        self,
        policy: Any,
        *,
        seam: str = "rtc",
        delay: int = 0,
        replan_every: int | None = None,
        warm_sigma: float = 0.0,
        warm_steps: int = 2,
        decay_end: int | None = None,
        seed: int | None = None,
    ) -> None:
        if seam not in SEAMS:
            raise ValueError(f"unknown seam {seam!r}; expected one of {SEAMS}")
        if not hasattr(policy, "denoiser") or not hasattr(policy, "sigmas"):
            raise ValueError(
                f"{type(policy).__name__} is not a chunk diffusion policy (needs denoiser, sigmas)"
            )
        self.policy = policy
        self.network = policy.network
        self.n_obs_steps, self.horizon = policy.n_obs_steps, policy.horizon
        self.action_dim = policy.action_dim
        self.replan_every = int(replan_every or policy.n_action_steps)
        room = self.horizon - self.n_obs_steps + 1
        if self.replan_every < 1 or delay < 0 or self.replan_every + delay > room:
            raise ValueError(
                f"need replan_every >= 1, delay >= 0 and replan_every + delay <= H - To + 1 = {room}; "
                f"got replan_every={self.replan_every}, delay={delay}"
            )
        if warm_sigma < 0 or (warm_sigma > 0 and (not isinstance(warm_steps, int) or warm_steps < 1)):
            raise ValueError(f"need warm_sigma >= 0 and warm_steps >= 1, got {warm_sigma}, {warm_steps}")
        if warm_sigma:
            warm_sigmas(warm_sigma, warm_steps)
        if decay_end is not None and not 0 <= decay_end <= self.horizon:
            raise ValueError(f"decay_end must lie in [0, {self.horizon}], got {decay_end}")
        self.options = {
            "seam": seam, "delay": int(delay), "replan_every": self.replan_every,
            "warm_sigma": float(warm_sigma), "warm_steps": int(warm_steps), "decay_end": decay_end,
        }  # fmt: skip
        self.seam, self.delay = seam, int(delay)
        self._seam_flags = (True,) + (False,) * (self.horizon - 1)
        self.warm_sigma, self.warm_steps, self.decay_end = float(warm_sigma), int(warm_steps), decay_end
        self.seed(seed)
        self.reset()

    # ----- bookkeeping ---------------------------------------------------------------------------------
    def seed(self, seed: int | None) -> None:
        """Seed the generator of sampling noise (None: torch's global RNG)."""
        self._seed = seed
        super().seed(seed)
        if hasattr(self.policy, "seed"):
            self.policy.seed(seed)

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.seed(seed)
        self._obs: collections.deque[np.ndarray] = collections.deque(maxlen=self.n_obs_steps)
        self._queue: collections.deque[tuple[np.ndarray, bool]] = collections.deque()
        self._executed: collections.deque[np.ndarray] = collections.deque(maxlen=max(1, self.horizon))
        self._chunk: torch.Tensor | None = None
        self._inputs = FusedInputs()
        self._chunk_tick = 0
        self._tick = 0
        self.nfe = 0
        self.ticks = 0
        self.seam_jumps: list[float] = []
        self.step_jumps: list[float] = []

    @property
    def queued(self) -> int:
        """Actions of the current chunk still to execute (the next chunk is sampled at ``delay`` or fewer)."""
        return len(self._queue)

    def stats(self) -> dict[str, float]:
        """NFE per control tick and mean action jumps (L2) at chunk seams and within chunks since reset."""
        return {
            "nfe_per_tick": self.nfe / max(1, self.ticks),
            "seam_jump": float(np.mean(self.seam_jumps)) if self.seam_jumps else float("nan"),
            "step_jump": float(np.mean(self.step_jumps)) if self.step_jumps else float("nan"),
            "seams": len(self.seam_jumps),
        }

    # ----- sampling ------------------------------------------------------------------------------------
    def predict_chunk(
        self,
        obs_history: Any,
        *,
        noise: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        init: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample raw ``(B, H, Da)`` chunks; ``init`` (raw) warm-starts at ``warm_sigma`` when that is > 0.

        ``prefix`` (B, P, Da) raw actions guide the first entries: hard inpainting of all P, or with
        ``weights`` (H,) soft inpainting ``w known + (1 - w) x`` at every level (P may be up to H then).
        """
        pol = self.policy
        hist = history_tensor(pol, obs_history)
        state, _ = split_history(pol, hist)
        bsz, device = state.shape[0], state.device
        shape = (bsz, self.horizon, self.action_dim)
        noise = self.start_noise(shape, noise, device)
        warm = init is not None and self.warm_sigma > 0
        if pol.sampler.fused and prefix is None:
            init_t = torch.as_tensor(init, dtype=torch.float32, device=device) if warm else None
            return self._fused_chunk(hist, noise, init_t)
        norm = pol.normalizer("action")
        if warm:
            sigmas = self._warm_grid(pol.sampler.sigma_min, pol.sampler.rho).to(device)
        else:
            sigmas = pol.sigmas().to(device)
        if warm:
            x = (
                norm.normalize(torch.as_tensor(init, dtype=torch.float32, device=device))
                + self.warm_sigma * noise
            )
        else:
            x = noise * sigmas[0]
        mask = known = None
        if prefix is not None:
            prefix = prefix_tensor(prefix, bsz, self.horizon, self.action_dim, device)
            p = prefix.shape[1]
            known = torch.zeros(shape, device=device)
            known[:, :p] = norm.normalize(prefix)
            if weights is None:
                mask = torch.zeros(shape, dtype=torch.bool, device=device)
                mask[:, :p] = True
            else:
                w = torch.as_tensor(weights, dtype=torch.float32, device=device).reshape(-1)
                if w.numel() != self.horizon:
                    raise ValueError(f"weights must have {self.horizon} entries, got {w.numel()}")
                w = w.clone()
                w[p:] = 0.0
                mask = w.reshape(1, -1, 1).expand(shape)
        with torch.no_grad(), eval_mode(pol.network):
            denoise = pol.conditioned_denoiser(hist)
            x0, info = sample(
                denoise, x, sigmas, solver=pol.sampler.solver, generator=self._generator,
                mask=mask, known=known, return_info=True, **pol.sampler.options,
            )  # fmt: skip
        self.nfe += info["nfe"] * (2 if _doubles(pol) else 1)
        return norm.unnormalize(x0.clamp(-1.0, 1.0))

    def _fused_chunk(self, hist: Any, noise: torch.Tensor, init: torch.Tensor | None) -> torch.Tensor:
        """Raw chunks through the policy's fused graph: warm-started from raw ``init`` when given."""
        pol = self.policy
        cfg = pol.sampler
        sigmas = pol.grid() if init is None else self._warm_grid(cfg.sigma_min, cfg.rho)
        chunk, nfe = run_fused_chunk(pol, hist, sigmas.to(noise.device), noise, init)
        self.nfe += nfe * (2 if _doubles(pol) else 1)
        return chunk

    def _warm_grid(self, sigma_min: float, rho: float) -> torch.Tensor:
        """``warm_sigmas`` of this wrapper's settings, memoized (a grid per tick costs a visible share)."""
        key = (self.warm_sigma, self.warm_steps, sigma_min, rho)
        if getattr(self, "_warm", (None,))[0] != key:
            self._warm = (key, warm_sigmas(self.warm_sigma, self.warm_steps, sigma_min, rho))
        return self._warm[1]

    def _plan(self, upcoming: list[np.ndarray]) -> torch.Tensor:
        """Sample the chunk whose index ``To - 1`` is this tick; ``upcoming`` actions run before it."""
        past = self.n_obs_steps - 1
        shift = self._tick - self._chunk_tick
        uses_prev = self.warm_sigma > 0 or self.seam in ("inpaint", "rtc")
        prev = None if self._chunk is None or not uses_prev else shift_chunk(self._chunk, shift)
        init = prev if self.warm_sigma > 0 else None
        prefix = weights = None
        if self.seam in ("inpaint", "rtc") and prev is not None:
            executed = list(self._executed)[-past:] if past else []
            ref = prev.clone()
            if len(executed) == past and past:
                ref[0, :past] = torch.as_tensor(np.stack(executed), dtype=ref.dtype)
            d = past + len(upcoming)
            if self.seam == "inpaint":
                prefix = ref[:, :d]
            else:
                end = self.decay_end if self.decay_end is not None else max(d, self.horizon - shift)
                prefix, weights = ref, prefix_weights(self.horizon, d, min(max(end, d), self.horizon))
        if prefix is None and self.policy.sampler.fused and not isinstance(self._obs[-1], dict):
            hist, noise = self._inputs.chunk_inputs(self.policy, self._obs, self._generator)
            chunk = self._fused_chunk(hist, noise, None if init is None else init.to(hist.device))
        else:
            chunk = self.predict_chunk(stack_history(self._obs), prefix=prefix, init=init, weights=weights)
        self._chunk, self._chunk_tick = chunk, self._tick
        return chunk

    def act(self, obs: Any) -> np.ndarray:
        """One observation -> one action; requests the next chunk ``delay`` ticks before the queue ends."""
        push_observation(self._obs, self.policy, obs)
        if len(self._queue) <= self.delay:
            upcoming = [a for a, _ in self._queue]
            old_tail = self._old_tail(len(upcoming)) if self.seam == "blend" else None
            chunk = self._plan(upcoming).cpu().numpy()[0]
            start = self.n_obs_steps - 1 + len(upcoming)
            new = chunk[start : start + self.replan_every]
            if old_tail is not None:
                new = new.copy()
                n = min(len(old_tail), len(new))
                w = (np.arange(n, dtype=np.float32) + 1) / (n + 1)
                new[:n] = w[:, None] * new[:n] + (1 - w[:, None]) * old_tail[:n]
            self._queue.extend(zip(new, self._seam_flags, strict=False))
        action, first = self._queue.popleft()
        if self._executed:
            jump = math.dist(action, self._executed[-1])
            (self.seam_jumps if first else self.step_jumps).append(jump)
        self._executed.append(action)
        self._tick += 1
        self.ticks += 1
        return action.copy()

    def _old_tail(self, queued: int) -> np.ndarray | None:
        """The current chunk's actions after its queued ones (what blending fades out)."""
        if self._chunk is None:
            return None
        start = self.n_obs_steps - 1 + (self._tick - self._chunk_tick) + queued
        tail = self._chunk[0, start:].cpu().numpy()
        return tail if len(tail) else None

    # ----- Policy interface ----------------------------------------------------------------------------
    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.policy.loss(batch)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the wrapped policy; the wrapper's settings go under ``config.json["realtime"]``."""
        import json

        out = self.policy.save(path)
        cfg_path = out / CONFIG_FILE
        config = json.loads(cfg_path.read_text())
        config["realtime"] = {"class": type(self).__name__, "version": VERSION, **self.options}
        write_json(cfg_path, config, sort_keys=True)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> RealTimePolicy:
        """Load a policy saved by ``save`` (or any agent directory) and wrap it; overrides are sampler fields
        or wrapper options (seam, delay, replan_every, warm_sigma, warm_steps, decay_end)."""
        import json

        from diffctl.agents import load as load_agent

        names = ("seam", "delay", "replan_every", "warm_sigma", "warm_steps", "decay_end")
        mine = {k: overrides.pop(k) for k in names if k in overrides}
        config = (
            json.loads((Path(path) / CONFIG_FILE).read_text()) if (Path(path) / CONFIG_FILE).is_file() else {}
        )
        saved = dict(config.get("realtime", {}))
        if saved and saved.pop("version", None) != VERSION:
            raise ValueError(
                f"{path}/config.json realtime section has an unsupported version; expected {VERSION}"
            )
        saved.pop("class", None)
        return cls(load_agent(path, **overrides), **{**saved, **mine})


def _doubles(policy: Any) -> bool:
    """Whether each denoiser call evaluates the network twice (classifier-free guidance on the goal)."""
    w = policy.sampler.guidance_scale
    return bool(policy.goal_dim) and w not in (0.0, 1.0)


class RTIPolicy(RealTimePolicy):
    """RTI-DP: warm-start each chunk from the shifted previous one at ``warm_sigma`` (``warm_steps``).

    The default sigma 2.0 (normalized actions, sigma_data 0.5) is large enough that the few remaining steps
    remove the re-noising; too small a sigma lets residual noise accumulate chunk after chunk
    (docs/experiments/realtime.md).
    """

    def __init__(self, policy: Any, *, warm_sigma: float = 2.0, warm_steps: int = 2, **kwargs: Any) -> None:
        kwargs.setdefault("seam", "naive")
        super().__init__(policy, warm_sigma=warm_sigma, warm_steps=warm_steps, **kwargs)


class RTCPolicy(RealTimePolicy):
    """Real-time chunking: next chunk soft-inpainted to the previous one, ``delay`` ticks of latency."""

    def __init__(self, policy: Any, *, delay: int = 2, **kwargs: Any) -> None:
        kwargs.setdefault("seam", "rtc")
        super().__init__(policy, delay=delay, **kwargs)
