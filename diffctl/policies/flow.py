"""FlowPolicy: a rectified-flow (flow matching) chunk policy, with an optional reflow stage.

The network predicts the velocity ``v = eps - x0`` on ``x_t = (1 - t) x0 + t eps``; ``FlowDenoiser`` maps it
to the VE form (``sigma = t / (1 - t)``), so every solver and the real-time wrappers apply, and Euler on the
flow grid is the flow's own Euler method. Reflow: sample (noise, action chunk) couplings from the trained
policy (``reflow_batch``) and train on them (batch key ``noise``), which straightens paths for 1-2 steps. The
couplings must come from a frozen copy of the trained policy: generating them with the model being trained is
a feedback loop that drifts away from the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from diffctl.kernels import schedules
from diffctl.kernels.denoisers import FlowDenoiser
from diffctl.kernels.losses import flow_matching_loss, masked_mse
from diffctl.kernels.samplers import sample
from diffctl.policies.base import SamplerConfig
from diffctl.policies.consistency import RawCondNet, split_batch
from diffctl.policies.diffusion import DiffusionPolicy, DiffusionPolicyConfig


@dataclass
class FlowPolicyConfig(DiffusionPolicyConfig):
    """Settings of a ``FlowPolicy`` (rectified-flow / flow-matching chunk policy)."""

    section: ClassVar[str] = "FlowPolicy"

    parameterization: Literal["flow"] = "flow"  # type: ignore[assignment]
    """Always ``flow``: ``x_t = (1 - t) x0 + t eps``, velocity target ``eps - x0``."""
    time_scale: float = 1.0
    """Multiplies ``t`` before the network's noise embedding (which also scales it by 250)."""
    t_sampling: Literal["uniform", "logit_normal"] = "uniform"
    """How training times are drawn."""

    def validate(self) -> None:
        super().validate()
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")


class FlowPolicy(DiffusionPolicy):
    """Flow-matching chunk policy sampled on ``schedules.flow`` (Euler by default)."""

    config_class: ClassVar[type[DiffusionPolicyConfig]] = FlowPolicyConfig
    default_sampler: ClassVar[dict[str, Any]] = {"solver": "euler", "steps": 10}

    def denoiser(self) -> nn.Module:
        return FlowDenoiser(self.network, self.config.time_scale)

    def grid(self, sampler: SamplerConfig | None = None) -> torch.Tensor:
        """Uniform-in-t flow grid (``schedules.flow``) with the sampler's number of steps."""
        steps = (sampler or self.sampler).steps
        return self._cached(("flow_sigmas", steps), lambda: schedules.flow(steps).float())

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Flow matching on a raw batch; with key ``noise`` (normalized-space couplings) it is reflow."""
        a, raw, mask = split_batch(self, batch)
        net, scale = RawCondNet(self.network), self.config.time_scale
        if "noise" not in batch:
            per = flow_matching_loss(net, a, raw, weight_mask=mask, time_scale=scale,
                                     t_sampling=self.config.t_sampling)  # fmt: skip
        else:
            eps = batch["noise"].to(a.device, a.dtype)
            if eps.shape != a.shape:
                raise ValueError(f"batch 'noise' has shape {tuple(eps.shape)}; expected {tuple(a.shape)}")
            t = torch.rand(a.shape[0], device=a.device)
            te = t.reshape(-1, 1, 1)
            per = masked_mse(net((1 - te) * a + te * eps, t * scale, raw), eps - a, mask)
        loss = per.mean()
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def reflow_batch(self, batch: Mapping[str, torch.Tensor], steps: int = 20) -> dict[str, torch.Tensor]:
        """(Call on a frozen copy.) The batch with ``actions`` replaced by this policy's samples (``steps``
        Euler steps, goal kept) and ``noise`` set to the normalized-space noise each sample started from."""
        a, (o, g, keep, images), _ = split_batch(self, batch)
        cond = self.network.condition(o, g, None if keep is None else torch.ones_like(keep), images)
        noise = torch.randn_like(a)
        sig = schedules.flow(steps).float().to(a.device)
        was = self.network.training
        self.network.eval()
        try:
            x0 = sample(lambda x, s: self.denoiser()(x, s, cond), noise * sig[0], sig, solver="euler")
        finally:
            self.network.train(was)
        actions = self.normalizer("action").unnormalize(x0.clamp(-1, 1))
        out = {k: v for k, v in batch.items() if k != "action_mask"}
        return {**out, "actions": actions, "noise": noise}
