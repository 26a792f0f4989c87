"""Runners: the act-time state of a policy, apart from the model that samples actions.

``ChunkRunner`` keeps the observation history (the first observation repeated to fill ``To`` steps), the
queue of planned actions and the last chunk (for warm starts), and asks the model for a new chunk when the
queue runs dry. It uses only the model's public methods (``check_obs``, ``predict_chunk``, and for sampling
models ``sampler``, ``grid``, ``generator``) and the fused path's preallocated inputs, so any model with
those methods is run the same way. ``StreamRunner`` keeps a streaming policy's buffer of actions at rising
noise levels instead of a queue.
"""

from __future__ import annotations

import collections
import collections.abc
from typing import Any

import numpy as np
import torch

from diffctl.core.modules import eval_mode, param_device
from diffctl.kernels.samplers import NonFiniteError
from diffctl.policies.fused import FusedInputs, network_device, run_fused_chunk


def _layout(obs: Any) -> Any:
    """Shape of a checked observation: its shape, or for a dict each key's shape."""
    if isinstance(obs, dict):
        return {k: v.shape for k, v in obs.items()}
    return obs.shape


def stack_history(history: collections.abc.Sequence[Any]) -> Any:
    """A history of checked observations as one batch ``(1, To, ...)``: an array, or a dict of arrays for
    observations with cameras."""
    if isinstance(history[0], dict):
        return {k: np.stack([h[k] for h in history])[None] for k in history[0]}
    return np.stack(history)[None]


def history_on(batch: Any, device: torch.device) -> Any:
    """``stack_history``'s batch as tensors on ``device`` (a dict stays a dict)."""
    if isinstance(batch, dict):
        return {k: torch.as_tensor(v, device=device) for k, v in batch.items()}
    return torch.as_tensor(batch, device=device)


def push_observation(history: collections.deque[Any], model: Any, obs: Any) -> Any:
    """``model.check_obs(obs)`` appended to ``history`` (filled with it on the first step of an episode); a
    rejected observation, or one whose shape differs from the episode's, never enters it."""
    arr = model.check_obs(obs)
    if history and _layout(history[-1]) != _layout(arr):
        raise ValueError(
            f"observation shape changed within an episode: {_layout(history[-1])} -> {_layout(arr)}"
        )
    if not history:
        history.extend([arr] * model.n_obs_steps)
    else:
        history.append(arr)
    return arr


class ChunkRunner:
    """Receding-horizon execution of action chunks: sample H actions, execute ``Ta`` from index ``To - 1``."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        """Forget the history, the queued actions and the last chunk (start of an episode)."""
        self.history: collections.deque[np.ndarray] = collections.deque(maxlen=self.model.n_obs_steps)
        self.queue: collections.deque[np.ndarray] = collections.deque()
        self.last_chunk: torch.Tensor | None = None
        self.inputs = FusedInputs()

    def observe(self, obs: Any) -> np.ndarray:
        """Check ``obs`` and push it onto the history (a rejected observation never enters it)."""
        return push_observation(self.history, self.model, obs)

    def warm_init(self) -> torch.Tensor | None:
        """The last chunk shifted by the executed actions (last action repeated), when warm starts are on."""
        m = self.model
        sampler = getattr(m, "sampler", None)
        if self.last_chunk is None or sampler is None or sampler.warm_start <= 0:
            return None
        shifted = self.last_chunk[:, m.n_action_steps :]
        pad = shifted[:, -1:].expand(-1, m.n_action_steps, -1)
        return torch.cat([shifted, pad], dim=1)

    def act(self, obs: Any) -> np.ndarray:
        """One observation -> one action; samples a new chunk when the queue of planned actions is empty.
        An observation the model cannot act on (its chunk is not finite) is refused and left out of the
        history."""
        if self.queue:
            self.observe(obs)
            return self.queue.popleft().copy()
        before = list(self.history)
        self.observe(obs)
        try:
            chunk = self.sample_chunk()
        except BaseException:
            self.history.clear()
            self.history.extend(before)
            raise
        self.last_chunk = chunk
        start = self.model.n_obs_steps - 1
        self.queue.extend(chunk.cpu().numpy()[0, start : start + self.model.n_action_steps])
        return self.queue.popleft().copy()

    def sample_chunk(self) -> torch.Tensor:
        """The model's chunk for the current history (fused when the sampler asks and no warm start applies);
        a ValueError blaming the observation when it is not finite."""
        m = self.model
        init = self.warm_init()
        try:
            cameras = isinstance(self.history[-1], dict)  # their frames take the general (fused) path
            if init is None and not cameras and getattr(getattr(m, "sampler", None), "fused", False):
                chunk = self.fused_chunk()
            else:
                chunk = m.predict_chunk(stack_history(self.history), init=init)
            finite = bool(torch.isfinite(chunk).all())
        except NonFiniteError:
            finite = False
        if not finite:
            last = self.history[-1]
            peak = float(np.abs(last["observations"] if isinstance(last, dict) else last).max())
            raise ValueError(
                f"act() produced non-finite actions from this observation (values up to {peak:.3g}): is it "
                "in the units of the data the agent was trained on?"
            )
        return chunk

    def fused_chunk(self) -> torch.Tensor:
        """A cold chunk of the current history through the fused graph with preallocated inputs."""
        m = self.model
        hist, noise = self.inputs.chunk_inputs(m, self.history, m.generator)
        return run_fused_chunk(m, hist, m.grid().to(hist.device), noise, None)[0]


class StreamRunner(ChunkRunner):
    """Act-time state of a streaming policy: the observation history, the buffer of the next actions at
    rising noise levels, and the NFE and ticks since ``reset``. Each tick moves the buffer one level down
    (``tick``), executes its now clean head and appends fresh noise (``advance``); the first tick fills the
    buffer (``fill_buffer``). With ``sampler.fused`` the steady-state tick is the ``fused_tick`` graph.
    """

    def reset(self) -> None:
        super().reset()
        self.buffer: torch.Tensor | None = None
        self.nfe = 0
        self.ticks = 0

    @torch.no_grad()
    def act(self, obs: Any) -> np.ndarray:
        """One observation -> one action with ``steps_per_tick`` NFE (about N on the first tick)."""
        self.observe(obs)
        m = self.model
        if m.sampler.fused and self.buffer is not None:
            device = network_device(m)
            if isinstance(self.history[-1], dict):  # cameras: the history's parts as they are
                hist = history_on(stack_history(self.history), device)
            else:
                hist = self.inputs.history(self.history, device)
            fresh = self.inputs.noise((1, 1, m.action_dim), m.generator, device)
            action, self.buffer = m.fused_tick(hist, self.buffer, fresh)
        else:
            hist = history_on(stack_history(self.history), param_device(m.network))
            with eval_mode(m.network):
                denoise = m.conditioned_denoiser(hist)
                if self.buffer is None:
                    self.buffer = m.fill_buffer(denoise)
                    self.nfe += m.levels - m.steps_per_tick
                action, moved = m.tick(denoise, self.buffer)
            self.buffer = m.advance(moved, torch.randn((1, 1, m.action_dim), generator=m.generator))
        self.nfe += m.steps_per_tick
        self.ticks += 1
        return action.cpu().numpy()[0]
