"""DPPO (Ren et al. 2024): fine-tune a diffusion policy's denoiser with PPO through its denoising chain.

Each decision samples a chunk with K ancestral (DDPM) steps on the policy's grid. Every step is a Gaussian
transition ``x_{k+1} ~ N(mu_theta(x_k, s_k), std_k^2)`` with ``std_k`` floored at ``min_std`` (exploration,
also at the last step to sigma 0), so the chain is a short inner MDP whose log-likelihood PPO can ratio. The
environment's reward over the executed actions, with GAE over decisions and a critic of the observation
history, gives one advantage per decision, shared by the last ``ft_steps`` transitions of its chain. An
optional behaviour-cloning anchor adds the policy's own denoising loss on its training data.

The result is the same ``DiffusionPolicy`` with new weights, saved with a DDPM sampler over the fine-tuned
chain (``diffctl eval`` and ``dc.load`` use it as any policy).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffctl.core.modules import eval_mode
from diffctl.core.registry import load
from diffctl.envs.evaluate import episode_seed
from diffctl.improve.finetune import FineTuneConfig, FineTuner, iteration_seed, last_success
from diffctl.improve.ppo import clipped_surrogate, gae, gaussian_log_prob
from diffctl.kernels.samplers import ancestral_sigmas
from diffctl.nets.mlp import mlp
from diffctl.policies.diffusion import history_tensor
from diffctl.train import checkpoint as ckpt

__all__ = ["DPPO", "ChainConfig", "DPPOConfig", "DenoisingChain", "collect_chains", "require_chain_policy"]


@dataclass
class ChainConfig(FineTuneConfig):
    """What fine-tuning through a policy's denoising chain needs, whatever the objective (DPPO, D3PO)."""

    minibatches: int = 8
    """Minibatches per pass (each chunk contributes ``ft_steps`` transitions)."""
    denoising_steps: int = 10
    """K: ancestral steps of the chain on the policy's grid (also the saved policy's sampler)."""
    ft_steps: int = 10
    """The last steps of the chain that are trained (the earlier ones run with the current weights)."""
    min_std: float = 0.1
    """Floor of each step's noise in normalized action units (exploration)."""
    actor_lr: float = 1e-5
    """Adam learning rate of the denoiser."""
    bc_coef: float = 0.0
    """Weight of the denoising loss on the policy's training data (0: no behaviour-cloning anchor)."""
    bc_batch: int = 256
    """Windows per anchor batch."""

    def validate(self) -> None:
        super().validate()
        self.require(at_least_one=("denoising_steps", "ft_steps", "bc_batch"),
                     positive=("min_std", "actor_lr"), non_negative=("bc_coef",))  # fmt: skip
        if self.ft_steps > self.denoising_steps:
            raise ValueError(
                f"finetune.ft_steps ({self.ft_steps}) must be <= denoising_steps ({self.denoising_steps})"
            )


@dataclass
class DPPOConfig(ChainConfig):
    """PPO through the denoising chain of a diffusion policy (``diffctl train finetune=dppo``)."""

    critic_lr: float = 1e-3
    """Adam learning rate of the critic."""
    gamma: float = 0.99
    """Discount per decision (one executed chunk)."""
    gae_lambda: float = 0.95
    """GAE's lambda over decisions."""
    clip: float = 0.01
    """PPO ratio clip per denoising transition (DPPO keeps it small: each chunk has many transitions)."""
    hidden: int = 256
    """Width of the critic."""
    depth: int = 2
    """Hidden layers of the critic."""

    def validate(self) -> None:
        super().validate()
        self.require(
            at_least_one=("hidden", "depth"), positive=("critic_lr", "clip"), unit=("gamma", "gae_lambda")
        )


class DenoisingChain:
    """The policy's K-step ancestral chain as Gaussian transitions: per step k its sigma, the weight of
    ``x_k`` in the mean (``s_down / s_k``) and the floored noise std."""

    def __init__(self, policy: Any, steps: int, min_std: float) -> None:
        self.policy = policy
        self.sigmas = policy.sigmas(policy.sampler.replace(steps=steps)).double()
        grid = self.sigmas.tolist()
        pairs = [ancestral_sigmas(grid[k], grid[k + 1], 1.0) for k in range(steps)]
        self.ratio = torch.tensor([down / grid[k] for k, (down, _) in enumerate(pairs)], dtype=torch.float32)
        self.std = torch.tensor([max(up, min_std) for _, up in pairs], dtype=torch.float32)
        self.steps = steps

    def mean(self, hist: Any, x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """The transition means of states ``x`` (B, H, Da) at step indices ``k`` (B,), differentiable in the
        policy's weights; the x0 prediction is clipped to the normalized action range."""
        denoise = self.policy.conditioned_denoiser(hist)
        sigma = self.sigmas.float()[k]
        x0 = denoise(x, sigma).clamp(-1.0, 1.0)
        r = self.ratio[k].reshape(-1, 1, 1)
        return x0 + r * (x - x0)

    def log_prob(self, hist: Any, x: torch.Tensor, x_next: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Log-likelihood (B,) of the transitions ``x -> x_next`` at steps ``k``."""
        mean = self.mean(hist, x, k).flatten(1)
        log_std = self.std[k].log().reshape(-1, 1).expand_as(mean)
        return gaussian_log_prob(x_next.flatten(1), mean, log_std)

    @torch.no_grad()
    def sample(self, hist: Any, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A chunk (B, H, Da) in normalized units and the chain's states (K + 1, B, H, Da)."""
        p = self.policy
        bsz = len(hist["observations"] if isinstance(hist, dict) else hist)
        x = torch.randn((bsz, p.horizon, p.action_dim), generator=generator) * float(self.sigmas[0])
        states = [x]
        for k in range(self.steps):
            idx = torch.full((bsz,), k, dtype=torch.long)
            mean = self.mean(hist, x, idx)
            x = mean + self.std[k] * torch.randn(mean.shape, generator=generator)
            states.append(x)
        return x.clamp(-1.0, 1.0), torch.stack(states)


def collect_chains(
    p: Any,
    chain: DenoisingChain,
    envs: Any,
    steps: int,
    seed: int,
    iteration: int,
    e: int,
    paired: bool = False,
) -> dict[str, Any]:
    """One synchronized episode per environment with policy ``p`` sampling through ``chain``, one chain per
    decision; time-major tensors over decisions. ``paired``: environments 2i and 2i + 1 start from the same
    episode seed (pairs to compare)."""
    gen = torch.Generator().manual_seed(iteration_seed(seed, iteration))
    seeds = [episode_seed(seed, iteration * e + (k // 2 if paired else k)) for k in range(e)]
    obs, _ = envs.reset(seed=seeds)
    history = [np.asarray(obs, np.float32)] * p.n_obs_steps
    running = np.ones(e, bool)
    success, returns = np.zeros(e, bool), np.zeros(e)
    rec: dict[str, list[Any]] = {
        k: [] for k in ("hist", "states", "reward", "terminal", "alive", "next_hist")
    }
    start, taken, counted = p.n_obs_steps - 1, 0, 0
    with eval_mode(p.network):
        while taken < steps and running.any():
            hist = history_tensor(p, np.stack(history, axis=1))
            chunk, states = chain.sample(hist, gen)
            actions = p.normalizer("action").unnormalize(chunk).numpy()
            reward, terminal = np.zeros(e), np.zeros(e, bool)
            alive = running.copy()
            for j in range(min(p.n_action_steps, steps - taken)):
                counted += int(running.sum())
                obs, r, term, trunc, infos = envs.step(actions[:, start + j])
                reward += np.where(running, r, 0.0)
                success = np.where(running, last_success(infos, e), success)
                terminal |= running & np.asarray(term)
                running &= ~(np.asarray(term) | np.asarray(trunc))
                history = [*history[1:], np.asarray(obs, np.float32)]
                taken += 1
                if not running.any():
                    break
            returns += reward
            after = history_tensor(p, np.stack(history, axis=1))
            rec["hist"].append(hist)
            rec["states"].append(states)
            rec["reward"].append(torch.as_tensor(reward).float())
            rec["terminal"].append(torch.as_tensor(terminal))
            rec["alive"].append(torch.as_tensor(alive))
            rec["next_hist"].append(after)
    batch = {k: torch.stack(v) for k, v in rec.items()}
    batch["states"] = batch["states"].transpose(1, 2)  # (D, E, K + 1, H, Da)
    batch.update(generator=gen, episode_success=success, episode_return=returns, env_steps=counted)
    return batch


def require_chain_policy(policy: Any) -> None:
    """A ValueError unless ``policy`` is a state-observation diffusion policy whose sampling starts from
    noise (what ``DenoisingChain`` rebuilds)."""
    chain = getattr(policy, "samples_from_noise", False) and callable(
        getattr(policy, "conditioned_denoiser", None)
    )
    if not chain or getattr(getattr(policy, "config", None), "image_shapes", None):
        raise ValueError(
            "fine-tuning through the denoising chain needs a state-observation diffusion policy that "
            f"samples from noise, not a {type(policy).__name__}"
        )


def bc_loss(policy: Any, data: Any, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """The behaviour-cloning anchor: the policy's own training loss on a random batch of its data."""
    idx = torch.randint(len(data), (batch_size,), generator=generator)
    loss, _ = policy.loss(data.get_batch(idx))
    return loss


class HistoryCritic(nn.Module):
    """V(observation history): an MLP on the policy's normalized history (state and goal), flattened."""

    def __init__(self, policy: Any, hidden: int, depth: int) -> None:
        super().__init__()
        self.policy = [policy]  # not a submodule: the critic's state holds only its own weights
        width = policy.n_obs_steps * policy.obs_dim + policy.goal_dim
        self.net = mlp(width, 1, hidden, depth, activation="relu")

    def features(self, hist: torch.Tensor) -> torch.Tensor:
        p = self.policy[0]
        state, goal = p.split_obs(hist)
        parts = [p.normalizer("obs").normalize(state).flatten(1)]
        if p.goal_dim:
            parts.append(p.normalizer("goal").normalize(goal))
        return torch.cat(parts, dim=-1).float()

    def forward(self, hist: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(hist)).squeeze(-1)


class DPPO(FineTuner):
    """DPPO on a ``DiffusionPolicy`` (module docstring); ``bc_data`` is the policy's training data for the
    behaviour-cloning anchor (anything with ``len`` and ``get_batch(indices)``)."""

    def __init__(self, config: DPPOConfig, policy: Any, bc_data: Any = None) -> None:
        require_chain_policy(policy)
        if config.bc_coef > 0 and bc_data is None:
            raise ValueError("finetune.bc_coef > 0 needs the policy's training data (the run's task dataset)")
        self.config, self.bc_data = config, bc_data
        self.agent = policy
        policy.sampler = policy.sampler.replace(solver="ddpm", steps=config.denoising_steps, options={})
        self.chain = DenoisingChain(policy, config.denoising_steps, config.min_std)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.critic = HistoryCritic(policy, config.hidden, config.depth)
        self.actor_opt = torch.optim.Adam(policy.network.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)

    # ----- rollouts ---------------------------------------------------------------------------------
    def collect(self, envs: Any, steps: int, iteration: int) -> dict[str, Any]:
        cfg = self.config
        return collect_chains(self.agent, self.chain, envs, steps, cfg.seed, iteration, cfg.num_envs)

    # ----- optimization -------------------------------------------------------------------------------
    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        p, cfg, chain = self.agent, self.config, self.chain
        with torch.no_grad():
            values = self.critic(batch["hist"].flatten(0, 1)).reshape(batch["reward"].shape)
            next_values = self.critic(batch["next_hist"].flatten(0, 1)).reshape(batch["reward"].shape)
        adv, ret = gae(batch["reward"], values, next_values, batch["terminal"], batch["alive"], cfg.gamma,
                       cfg.gae_lambda)  # fmt: skip
        keep = batch["alive"].reshape(-1)
        hist = batch["hist"].flatten(0, 1)[keep]
        states = batch["states"].flatten(0, 1)[keep]  # (N, K + 1, H, Da)
        adv, ret = adv.reshape(-1)[keep], ret.reshape(-1)[keep]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        first = chain.steps - cfg.ft_steps
        n, ks = len(hist), torch.arange(first, chain.steps)
        # every (decision, fine-tuned step) pair, with its log-likelihood under the rollout's weights
        rows = torch.arange(n).repeat_interleave(len(ks))
        k = ks.repeat(n)
        x, x_next = states[rows, k], states[rows, k + 1]
        with torch.no_grad(), eval_mode(p.network):
            old = torch.cat([chain.log_prob(hist[rows[s:s + 4096]], x[s:s + 4096], x_next[s:s + 4096],
                                            k[s:s + 4096]) for s in range(0, len(rows), 4096)])  # fmt: skip
        size = max(1, math.ceil(len(rows) / cfg.minibatches))
        keys = ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "bc_loss")
        logs: dict[str, list[float]] = {key: [] for key in keys}
        with eval_mode(p.network):
            for _ in range(cfg.epochs):
                order = torch.randperm(len(rows), generator=batch["generator"])
                for s in range(0, len(rows), size):
                    idx = order[s : s + size]
                    logp = chain.log_prob(hist[rows[idx]], x[idx], x_next[idx], k[idx])
                    pg, clip_frac, kl = clipped_surrogate(logp, old[idx], adv[rows[idx]], cfg.clip)
                    loss = pg
                    bc = None
                    if cfg.bc_coef > 0:
                        bc = bc_loss(p, self.bc_data, cfg.bc_batch, batch["generator"])
                    if bc is not None:
                        loss = loss + cfg.bc_coef * bc
                    self.actor_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(p.network.parameters(), cfg.max_grad_norm)
                    self.actor_opt.step()
                    v_idx = torch.randint(n, (min(n, size),), generator=batch["generator"])
                    v_loss = (self.critic(hist[v_idx]) - ret[v_idx]).pow(2).mean()
                    self.critic_opt.zero_grad(set_to_none=True)
                    v_loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                    self.critic_opt.step()
                    for key, value in zip(keys, (pg, v_loss, clip_frac, kl, bc), strict=True):
                        if value is not None:
                            logs[key].append(float(value.detach()))
        out = {key: float(np.mean(v)) for key, v in logs.items() if v}
        out["train/success_rate"] = float(batch["episode_success"].mean())
        out["train/mean_return"] = float(batch["episode_return"].mean())
        return out

    # ----- checkpoints --------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        actor, actor_meta = ckpt.flatten_optimizer(self.actor_opt.state_dict())
        critic, critic_meta = ckpt.flatten_optimizer(self.critic_opt.state_dict())
        tensors = {f"actor.{k}": v for k, v in actor.items()}
        tensors.update({f"critic.{k}": v for k, v in critic.items()})
        tensors.update({f"critic_net.{k}": v for k, v in self.critic.state_dict().items()})
        return tensors, {"actor_optimizer": actor_meta, "critic_optimizer": critic_meta}

    def load_state(self, agent_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        saved = load(agent_dir)
        self.agent.network.load_state_dict(saved.network.state_dict())

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.critic.load_state_dict(part("critic_net."))
        self.actor_opt.load_state_dict(ckpt.unflatten_optimizer(part("actor."), meta["actor_optimizer"]))
        self.critic_opt.load_state_dict(ckpt.unflatten_optimizer(part("critic."), meta["critic_optimizer"]))


def load_policy(config: ChainConfig, task: str | None) -> Any:
    """The diffusion policy of ``config.base``, checked against the run's task."""
    if not config.base:
        raise ValueError("finetune.base must name the checkpoint of the diffusion policy to fine-tune")
    policy = load(config.base)
    if task and getattr(policy, "task", None) and policy.task != task:
        raise ValueError(
            f"the policy {config.base} was trained on task {policy.task!r}, the run is on {task!r}"
        )
    return policy


def finetune_dppo(
    config: DPPOConfig,
    task: str,
    run_dir: str | Path,
    *,
    env_fn: Callable[[], Any] | None = None,
    bc_data: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Fine-tune ``config.base`` on ``task`` with DPPO into ``run_dir`` (``fine_tune``'s options)."""
    from diffctl.improve.finetune import fine_tune

    policy = load_policy(config, None if env_fn else task)
    return fine_tune(DPPO(config, policy, bc_data), task, run_dir, env_fn=env_fn, **options)
