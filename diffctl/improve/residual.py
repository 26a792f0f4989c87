"""Residual RL on a frozen chunk policy (ResiP, Ankile et al. 2024): ``a = a_base + scale * delta``.

The base diffusion policy keeps running its receding-horizon chunks, frozen. A small Gaussian policy sees the
normalized observation and the base action of each step and proposes a correction ``delta`` in normalized
action units; PPO (``diffctl.improve.ppo``) trains it, and a critic on the same input, from the simulator's
rewards. Its last layer starts at zero, so fine-tuning starts exactly at the base policy.

``ResidualPolicy`` is the agent (``act``, ``save``, ``load``; the base policy is saved inside its directory,
so a checkpoint is self-contained); ``BatchedChunks`` runs the base policy over E environments at once;
``ResidualPPO`` collects and updates for ``improve.finetune.fine_tune`` (``finetune_residual``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from diffctl.atomic import atomic_dir
from diffctl.core.persistence import CONFIG_FILE, WEIGHTS_FILE, load_network_state, read_agent_dir
from diffctl.core.registry import load
from diffctl.envs.evaluate import episode_seed
from diffctl.improve.finetune import (
    EnvFn,
    FineTuneConfig,
    FineTuner,
    fine_tune,
    iteration_seed,
    last_success,
)
from diffctl.improve.ppo import clipped_surrogate, gae, gaussian_log_prob
from diffctl.nets.mlp import mlp
from diffctl.train import checkpoint as ckpt

__all__ = [
    "BatchedChunks",
    "ResidualNet",
    "ResidualPPO",
    "ResidualPPOConfig",
    "ResidualPolicy",
    "finetune_residual",
]

VERSION = 1
BASE_DIR = "base"


@dataclass
class ResidualPPOConfig(FineTuneConfig):
    """Residual PPO fine-tuning of a frozen chunk policy (``diffctl train finetune=residual_ppo``)."""

    residual_scale: float = 0.1
    """The correction's scale in normalized action units (ResiP keeps it small)."""
    hidden: int = 256
    """Width of the residual actor and the critic."""
    depth: int = 2
    """Hidden layers of the residual actor and the critic."""
    init_log_std: float = -1.0
    """Initial log standard deviation of ``delta`` (before ``residual_scale``)."""
    lr: float = 3e-4
    """Adam learning rate of actor and critic."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE's lambda."""
    clip: float = 0.2
    """PPO ratio clip."""
    value_coef: float = 0.5
    """Weight of the critic's squared error."""
    entropy_coef: float = 0.0
    """Weight of the Gaussian's entropy bonus."""

    def validate(self) -> None:
        super().validate()
        self.require(at_least_one=("hidden", "depth"), positive=("residual_scale", "lr", "clip"),
                     unit=("gamma", "gae_lambda"))  # fmt: skip


def base_features(base: Any, obs: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
    """The residual's input: the base policy's normalized state (and goal) and normalized base action."""
    parts = [base.normalizer("obs").normalize(obs[:, : base.obs_dim])]
    if base.goal_dim:
        parts.append(base.normalizer("goal").normalize(obs[:, base.obs_dim :]))
    parts.append(base.normalizer("action").normalize(base_action))
    return torch.cat(parts, dim=-1).float()


class ResidualNet(nn.Module):
    """Gaussian residual actor on (state, base action) features (mean MLP with a zero last layer,
    state-free log std) and a state-value critic on the state part."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int, depth: int, init_log_std: float) -> None:
        super().__init__()
        self.state_dim = state_dim
        self.actor = mlp(state_dim + action_dim, action_dim, hidden, depth, activation="relu")
        nn.init.zeros_(self.actor[-1].weight)
        nn.init.zeros_(self.actor[-1].bias)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.critic = mlp(state_dim, 1, hidden, depth, activation="relu")

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """V(s) (B,) of features (B, >= state_dim); only the state part is read."""
        return self.critic(x[..., : self.state_dim]).squeeze(-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean (B, Da), log std (Da,) and value (B,) of features (B, state + action)."""
        return self.actor(x), self.log_std, self.value(x)


class BatchedChunks:
    """The base policy's receding-horizon chunks over E environments that start their episodes together:
    every ``n_action_steps`` steps one batched ``predict_chunk`` from each environment's history."""

    def __init__(self, base: Any, num_envs: int) -> None:
        self.base, self.num_envs = base, int(num_envs)
        self.reset()

    def reset(self) -> None:
        self.history: list[np.ndarray] = []
        self.queue: np.ndarray | None = None
        self.step = 0

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Raw base actions (E, Da) for the raw observations (E, D) of the current step."""
        b = self.base
        obs = np.asarray(obs, dtype=np.float32)
        if not self.history:
            self.history = [obs] * b.n_obs_steps
        else:
            self.history = [*self.history[1:], obs]
        k = self.step % b.n_action_steps
        if k == 0:
            hist = torch.from_numpy(np.stack(self.history, axis=1))
            chunk = b.predict_chunk(hist).cpu().numpy()
            start = b.n_obs_steps - 1
            self.queue = chunk[:, start : start + b.n_action_steps]
        self.step += 1
        assert self.queue is not None
        return self.queue[:, k]


class ResidualPolicy:
    """The fine-tuned agent: the frozen ``base`` chunk policy plus the residual's mean correction."""

    config_class: ClassVar[type[ResidualPPOConfig]] = ResidualPPOConfig

    def __init__(self, base: Any, config: ResidualPPOConfig) -> None:
        for name in ("predict_chunk", "normalizer", "n_obs_steps", "n_action_steps"):
            if not hasattr(base, name):
                raise ValueError(
                    f"{type(base).__name__} has no {name}: residual RL needs a chunk policy base"
                )
        self.base, self.config = base, config
        self.task = getattr(base, "task", None)
        self.obs_dim, self.goal_dim, self.action_dim = base.obs_dim, base.goal_dim, base.action_dim
        state_dim = base.obs_dim + base.goal_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.network = ResidualNet(
                state_dim, base.action_dim, config.hidden, config.depth, config.init_log_std
            )
        self.chunks = BatchedChunks(base, 1)

    # ----- acting ------------------------------------------------------------------------------------
    def compose(self, base_action: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Raw actions of raw base actions plus the normalized correction ``residual_scale * delta``."""
        norm = self.base.normalizer("action")
        corrected = norm.normalize(base_action) + self.config.residual_scale * delta
        return norm.unnormalize(corrected.clamp(-1.0, 1.0)).clamp(-1.0, 1.0)

    def seed(self, seed: int | None) -> None:
        """Reseed the base policy's sampling (the residual acts by its mean)."""
        self.base.seed(seed)

    def reset(self, seed: int | None = None) -> None:
        self.chunks.reset()
        if seed is not None:
            self.seed(seed)

    @torch.no_grad()
    def act(self, obs: Any) -> np.ndarray:
        x = np.asarray(self.base.check_obs(obs), dtype=np.float32)[None]
        a_base = torch.from_numpy(self.chunks.act(x)).float()
        mean, _, _ = self.network(base_features(self.base, torch.from_numpy(x), a_base))
        return self.compose(a_base, mean)[0].numpy()

    # ----- persistence -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """``config.json`` + ``model.safetensors`` of the residual, and the base policy in ``base/``."""
        from safetensors.torch import save_file

        final = Path(path)
        with atomic_dir(final) as tmp:
            self.base.save(tmp / BASE_DIR)
            state = {k: v.detach().cpu().contiguous() for k, v in self.network.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            config = {"class": type(self).__name__, "version": VERSION, "task": self.task,
                      "hyperparameters": self.config.to_dict()}  # fmt: skip
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        return final

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> ResidualPolicy:
        """Rebuild a saved residual policy; ``overrides`` are sampler settings of its base policy."""
        root = Path(path)
        config, state = read_agent_dir(root)
        if config.get("class") != cls.__name__ or config.get("version") != VERSION:
            raise ValueError(f"{root / CONFIG_FILE} is not a {cls.__name__} v{VERSION} checkpoint")
        hyper = ResidualPPOConfig.from_dict(config["hyperparameters"])
        agent = cls(load(root / BASE_DIR, **overrides), hyper)
        load_network_state(agent.network, state, root)
        agent.task = config.get("task") or agent.task
        return agent


def load_base(config: ResidualPPOConfig, task: str | None) -> Any:
    """The frozen base policy of ``config.base``, checked against the run's task."""
    if not config.base:
        raise ValueError("finetune.base must name the checkpoint of the base policy to fine-tune")
    base = load(config.base)
    if not callable(getattr(base, "predict_chunk", None)) or not hasattr(base, "normalizer"):
        raise ValueError(f"{config.base} holds a {type(base).__name__}; residual RL needs a chunk policy")
    if task and getattr(base, "task", None) and base.task != task:
        raise ValueError(
            f"the base policy {config.base} was trained on task {base.task!r}, the run is on {task!r}"
        )
    return base


def collect(agent: ResidualPolicy, envs: Any, steps: int, seed: int, iteration: int) -> dict[str, Any]:
    """One synchronized episode per environment with the stochastic residual; time-major tensors."""
    cfg, base, net = agent.config, agent.base, agent.network
    e = cfg.num_envs
    it_seed = iteration_seed(seed, iteration)
    gen = torch.Generator().manual_seed(it_seed)
    base.seed(it_seed)
    chunks = BatchedChunks(base, e)
    obs, _ = envs.reset(seed=[episode_seed(seed, iteration * e + k) for k in range(e)])
    feats, deltas, logps, rewards, terminal, alive, next_feats = [], [], [], [], [], [], []
    running = np.ones(e, bool)
    success, returns = np.zeros(e, bool), np.zeros(e)
    with torch.no_grad():
        for _ in range(steps):
            a_base = torch.from_numpy(np.asarray(chunks.act(obs), dtype=np.float32))
            x = base_features(base, torch.as_tensor(obs, dtype=torch.float32), a_base)
            mean, log_std, _ = net(x)
            delta = mean + log_std.exp() * torch.randn(mean.shape, generator=gen)
            action = agent.compose(a_base, delta)
            obs, reward, term, trunc, infos = envs.step(action.numpy())
            alive.append(torch.from_numpy(running.copy()))
            feats.append(x)
            deltas.append(delta)
            logps.append(gaussian_log_prob(delta, mean, log_std))
            rewards.append(torch.as_tensor(reward, dtype=torch.float32))
            terminal.append(torch.as_tensor(term, dtype=torch.bool))
            state = torch.as_tensor(obs, dtype=torch.float32)
            next_feats.append(base_features(base, state, torch.zeros(e, base.action_dim)))
            returns += np.where(running, reward, 0.0)
            success = np.where(running, last_success(infos, e), success)
            running &= ~(np.asarray(term) | np.asarray(trunc))
            if not running.any():
                break
    batch = {
        "features": torch.stack(feats), "deltas": torch.stack(deltas), "log_probs": torch.stack(logps),
        "rewards": torch.stack(rewards), "terminal": torch.stack(terminal), "alive": torch.stack(alive),
        "next_features": torch.stack(next_feats),
    }  # fmt: skip
    batch["episode_success"], batch["episode_return"] = success, returns
    batch["generator"], batch["env_steps"] = gen, int(batch["alive"].sum())
    return batch


def update(
    agent: ResidualPolicy, optimizer: torch.optim.Optimizer, batch: dict[str, Any]
) -> dict[str, float]:
    """``epochs`` passes of minibatch PPO over one rollout; the mean of each logged quantity."""
    cfg, net = agent.config, agent.network
    with torch.no_grad():
        values = net.value(batch["features"])
        next_values = net.value(batch["next_features"])
    adv, ret = gae(batch["rewards"], values, next_values, batch["terminal"], batch["alive"], cfg.gamma,
                   cfg.gae_lambda)  # fmt: skip
    keep = batch["alive"].reshape(-1)
    x = batch["features"].reshape(-1, batch["features"].shape[-1])[keep]
    delta = batch["deltas"].reshape(-1, batch["deltas"].shape[-1])[keep]
    old_logp, adv, ret = (t.reshape(-1)[keep] for t in (batch["log_probs"], adv, ret))
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    n = len(x)
    size = max(1, math.ceil(n / cfg.minibatches))
    logs: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "clip_fraction": [], "approx_kl": []}
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=batch["generator"])
        for start in range(0, n, size):
            idx = order[start : start + size]
            mean, log_std, v = net(x[idx])
            logp = gaussian_log_prob(delta[idx], mean, log_std.expand_as(mean))
            pg, clip_frac, kl = clipped_surrogate(logp, old_logp[idx], adv[idx], cfg.clip)
            v_loss = (v - ret[idx]).pow(2).mean()
            entropy = (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum()
            loss = pg + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
            optimizer.step()
            for key, value in zip(logs, (pg, v_loss, clip_frac, kl), strict=True):
                logs[key].append(float(value.detach()))
    out = {k: float(np.mean(v)) for k, v in logs.items()}
    out["std"] = float(net.log_std.detach().exp().mean())
    return out


class ResidualPPO(FineTuner):
    """Residual PPO (ResiP) on ``ResidualPolicy``: one Adam over the residual actor and critic."""

    def __init__(self, config: ResidualPPOConfig, base: Any) -> None:
        self.config = config
        self.agent = ResidualPolicy(base, config)
        self.optimizer = torch.optim.Adam(self.agent.network.parameters(), lr=config.lr)

    def collect(self, envs: Any, steps: int, iteration: int) -> dict[str, Any]:
        return collect(self.agent, envs, steps, self.config.seed, iteration)

    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        logs = update(self.agent, self.optimizer, batch)
        logs["train/success_rate"] = float(batch["episode_success"].mean())
        logs["train/mean_return"] = float(batch["episode_return"].mean())
        return logs

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = ckpt.flatten_optimizer(self.optimizer.state_dict())
        return tensors, {"optimizer": meta}

    def load_state(self, agent_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        saved = ResidualPolicy.load(agent_dir)
        self.agent.network.load_state_dict(saved.network.state_dict())
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, meta["optimizer"]))


def finetune_residual(
    config: ResidualPPOConfig,
    task: str,
    run_dir: str | Path,
    *,
    env_fn: EnvFn | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Fine-tune ``config.base`` on ``task`` with residual PPO into ``run_dir`` (``fine_tune``'s options)."""
    base = load_base(config, None if env_fn else task)
    return fine_tune(ResidualPPO(config, base), task, run_dir, env_fn=env_fn, **options)
