"""PPO's math as free functions: generalized advantage estimation, the clipped surrogate and Gaussian
log-probabilities (Schulman et al. 2017; GAE: Schulman et al. 2016).

Rollouts are time-major tensors ``(T, E)`` over E environments. ``alive[t]`` marks the steps that happened
(an environment that terminated early is idle, masked out, until the rollout ends); ``terminal[t]`` marks a
step after which the episode ended for good (no bootstrap), while an episode cut by the rollout's end or a
time limit is bootstrapped with the value of the state it reached (``next_values``).
"""

from __future__ import annotations

import math

import torch

__all__ = ["clipped_surrogate", "gae", "gaussian_log_prob"]


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminal: torch.Tensor,
    alive: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and value targets ``(T, E)``: ``A_t = delta_t + gamma lam A_{t+1}`` with ``delta_t = r_t +
    gamma V(s_{t+1}) (1 - terminal_t) - V(s_t)``; the recursion stops at a terminal step, at the last step
    and where the next step is not alive (its ``next_values`` bootstrap instead)."""
    steps = rewards.shape[0]
    cont = 1.0 - terminal.float()
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(steps)):
        delta = rewards[t] + gamma * next_values[t] * cont[t] - values[t]
        chained = cont[t] * (alive[t + 1].float() if t + 1 < steps else torch.zeros_like(running))
        running = delta + gamma * lam * chained * running
        adv[t] = running * alive[t].float()
    return adv, (adv + values) * alive.float()


def clipped_surrogate(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's policy loss ``-mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A))``, the fraction of samples whose
    ratio was clipped, and the approximate KL ``mean((rho - 1) - log rho)``."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        clip_fraction = ((ratio - 1.0).abs() > clip).float().mean()
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
    return loss, clip_fraction, approx_kl


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of a diagonal Gaussian, summed over the last axis."""
    var = torch.exp(2.0 * log_std)
    per_dim = -0.5 * ((x - mean) ** 2 / var) - log_std - 0.5 * math.log(2.0 * math.pi)
    return per_dim.sum(dim=-1)
