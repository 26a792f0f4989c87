"""The diffusion actor of the offline RL agents: an MLP noise predictor over one action, conditioned on
the state, trained with a few-step VP (DDPM) schedule and sampled through ``kernels.sample``.

``sample`` keeps the autograd graph when asked, so Diffusion-QL can back-propagate Q through the chain;
``denoise_step`` returns the BC loss and the one-step estimate of the clean action from the same network
evaluation (EDP's action approximation).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffctl.kernels import schedules
from diffctl.kernels.denoisers import VPDenoiser
from diffctl.kernels.samplers import sample
from diffctl.nets import mlp
from diffctl.nets.layers import noise_embedding

BETA_SCHEDULES = ("dql_vp", "linear", "squaredcos_cap_v2")


def dql_vp_alphas_cumprod(steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> torch.Tensor:
    """Diffusion-QL's discrete VP schedule: ``alpha_t = exp(-b_min/T - (b_max - b_min)(2t - 1) / (2 T^2))``,
    t = 1..T; returns the cumulative products (float64, shape ``(T,)``)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_train_timesteps must be a positive integer, got {steps!r}")
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    alpha = torch.exp(-beta_min / steps - 0.5 * (beta_max - beta_min) * (2 * t - 1) / steps**2)
    return torch.cumprod(alpha, dim=0)


def actor_alphas_cumprod(kind: str, steps: int) -> torch.Tensor:
    """``alphas_cumprod`` of the actor's schedule by name (see ``BETA_SCHEDULES``)."""
    if kind == "dql_vp":
        return dql_vp_alphas_cumprod(steps)
    if kind in ("linear", "squaredcos_cap_v2"):
        return schedules.vp_alphas_cumprod(kind, steps)
    raise ValueError(f"unknown actor beta_schedule {kind!r}; expected one of {BETA_SCHEDULES}")


class NoiseNet(nn.Module):
    """``eps(x (B, Da), t (B,), state (B, Ds)) -> (B, Da)``: timestep embedding + Mish MLP."""

    def __init__(
        self, state_dim: int, action_dim: int, hidden: int = 256, depth: int = 3, embed_dim: int = 16
    ):
        super().__init__()
        self.time = noise_embedding(embed_dim, 2 * embed_dim)
        self.net = mlp(action_dim + 2 * embed_dim + state_dim, action_dim, hidden, depth)

    def forward(self, x: torch.Tensor, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, self.time(t), state], dim=-1))


class DiffusionActor(nn.Module):
    """Few-step VP diffusion over one normalized action in [-1, 1], eps-prediction."""

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        num_train_timesteps: int = 5,
        beta_schedule: str = "dql_vp",
        hidden: int = 256,
        depth: int = 3,
    ) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.eps_net = NoiseNet(state_dim, action_dim, hidden, depth)
        abar = actor_alphas_cumprod(beta_schedule, num_train_timesteps)
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)
        self._abar64 = abar

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.numel())

    def sigmas(self, steps: int, spacing: str = "leading") -> torch.Tensor:
        """VE grid at ``steps`` of the training timesteps (``steps = T`` walks all of them), ends in 0."""
        if steps > self.num_train_timesteps:
            raise ValueError(
                f"sampler steps={steps} exceeds the actor's num_train_timesteps="
                f"{self.num_train_timesteps}; use steps <= {self.num_train_timesteps} (e.g. sampler.steps="
                f"{self.num_train_timesteps} with solver ddpm, the method's chain)"
            )
        return schedules.vp_grid(steps, self._abar64, spacing=spacing).float()

    def denoise_step(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise ``action`` at a uniform training timestep; returns the per-sample eps MSE ``(B,)`` and the
        one-step clean-action estimate ``(B, Da)`` clipped to [-1, 1] (both from one network call)."""
        bsz = action.shape[0]
        t = torch.randint(0, self.num_train_timesteps, (bsz,), device=action.device)
        abar = self.alphas_cumprod[t].unsqueeze(-1)
        eps = torch.randn_like(action)
        x_t = abar.sqrt() * action + (1 - abar).sqrt() * eps
        pred = self.eps_net(x_t, t.to(action.dtype), state)
        bc = ((pred - eps) ** 2).mean(dim=-1)
        a0 = ((x_t - (1 - abar).sqrt() * pred) / abar.sqrt()).clamp(-1.0, 1.0)
        return bc, a0

    def sample(
        self,
        state: torch.Tensor,
        sigmas: torch.Tensor,
        solver: str = "ddpm",
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        **options: object,
    ) -> torch.Tensor:
        """Normalized actions ``(B, Da)`` for states ``(B, Ds)``; differentiable unless under no_grad."""
        denoiser = VPDenoiser(self.eps_net, self.alphas_cumprod, prediction="eps", clip_x0=1.0)
        shape = (state.shape[0], self.action_dim)
        if noise is None:
            noise = torch.randn(shape, generator=generator)
        x = noise.to(state.device, state.dtype) * sigmas[0].to(state.device)

        def denoise(x_: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return denoiser(x_, sigma, state)

        out = sample(denoise, x, sigmas.to(state.device), solver=solver, generator=generator, **options)
        return out.clamp(-1.0, 1.0)


def softmax_pick(q: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """Index per row of ``q (B, N)`` drawn from ``softmax(q / temperature)``."""
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"selection temperature must be > 0, got {temperature}")
    probs = torch.softmax(q / temperature, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(q.device)
