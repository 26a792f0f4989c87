"""The residual-PPO fine-tuning run: rollouts in vectorized simulators, PPO updates, checkpoints, resume.

Every iteration runs one whole episode in each of ``num_envs`` environments (reset together with seeds
derived from the run's seed and the iteration), then ``epochs`` passes of minibatch PPO over it. All of an
iteration's randomness (episode seeds, the base policy's sampling noise, the residual's noise, minibatch
order) is drawn from generators seeded by (seed, iteration), so the state between iterations is only the
residual network and the optimizer: a resumed run continues exactly as an uninterrupted one would.

Layout of the run directory (as for ``diffctl train``): ``checkpoints/step_XXXXXXX/`` (the agent plus the
trainer state, step = simulator steps so far), ``checkpoint/`` (the last agent), ``metrics.jsonl``,
``summary.json`` and ``learning_curves.png``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from diffctl.atomic import atomic_dir
from diffctl.envs.evaluate import episode_seed
from diffctl.improve.ppo import clipped_surrogate, gae, gaussian_log_prob
from diffctl.improve.residual import (
    BatchedChunks,
    ResidualPolicy,
    ResidualPPOConfig,
    base_features,
    load_base,
)
from diffctl.train import checkpoint as ckpt
from diffctl.train.metrics import MetricsLogger

__all__ = ["FineTuner", "ResidualPPO", "fine_tune", "finetune_residual", "iteration_seed"]

EnvFn = Callable[[], Any]


def iteration_seed(seed: int, iteration: int) -> int:
    """The seed of everything random in one iteration."""
    return (int(seed) * 1_000_003 + int(iteration)) % (2**63)


def make_envs(task: str, num_envs: int, async_envs: bool, env_fn: EnvFn | None) -> Any:
    import gymnasium as gym

    from diffctl.envs.registry import make_env

    fns = [env_fn or (lambda: make_env(task)) for _ in range(num_envs)]
    return gym.vector.AsyncVectorEnv(fns) if async_envs else gym.vector.SyncVectorEnv(fns)


def _last_success(infos: dict[str, Any], num_envs: int) -> np.ndarray:
    """The ``success`` (or ``is_success``) flag of each environment in a vector env's info dict."""
    for key in ("success", "is_success"):
        if key in infos:
            present = infos.get(f"_{key}", np.ones(num_envs, bool))
            return np.where(present, np.asarray(infos[key], dtype=bool), False)
    return np.zeros(num_envs, bool)


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
            success = np.where(running, _last_success(infos, e), success)
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


class FineTuner:
    """One fine-tuning method for ``fine_tune``: the ``agent`` it improves (saved and evaluated as is),
    ``collect`` (one iteration's rollouts), ``update`` (its optimization step, returning scalars to log) and
    the trainer state beyond the agent's weights (optimizers, critics) for checkpoints."""

    agent: Any
    num_envs: int
    checkpoint_every: int
    eval_every: int
    env_steps: int
    seed: int

    def collect(self, envs: Any, steps: int, iteration: int) -> dict[str, Any]:
        raise NotImplementedError

    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise NotImplementedError

    def load_state(self, agent_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        raise NotImplementedError


class ResidualPPO(FineTuner):
    """Residual PPO (ResiP) on ``ResidualPolicy``: one Adam over the residual actor and critic."""

    def __init__(self, config: ResidualPPOConfig, base: Any) -> None:
        self.config = config
        self.agent = ResidualPolicy(base, config)
        self.optimizer = torch.optim.Adam(self.agent.network.parameters(), lr=config.lr)
        self.num_envs, self.checkpoint_every = config.num_envs, config.checkpoint_every
        self.eval_every, self.env_steps, self.seed = config.eval_every, config.env_steps, config.seed

    def collect(self, envs: Any, steps: int, iteration: int) -> dict[str, Any]:
        return collect(self.agent, envs, steps, self.seed, iteration)

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


def save_checkpoint(run_dir: Path, tuner: FineTuner, step: int, iteration: int) -> Path:
    """``checkpoints/step_XXXXXXX/``: the agent (``agent/``) and the trainer state, written atomically."""
    path = run_dir / "checkpoints" / ckpt.step_dir_name(step)
    with atomic_dir(path) as tmp:
        tuner.agent.save(tmp / "agent")
        tensors, meta = tuner.state()
        ckpt.save_state(tmp, tensors, {**meta, "step": step, "iteration": iteration})
    return path


def restore(run_dir: Path, tuner: FineTuner) -> tuple[int, int]:
    """Load the newest step checkpoint of ``run_dir`` into ``tuner``; (step, iteration) to continue from,
    (0, 0) when there is none."""
    found = ckpt.list_step_checkpoints(run_dir / "checkpoints")
    if not found:
        return 0, 0
    _, path = found[-1]
    tensors, meta = ckpt.load_state(path)
    tuner.load_state(path / "agent", tensors, meta)
    return int(meta["step"]), int(meta["iteration"])


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
    return fine_tune(ResidualPPO(config, base), task, run_dir, env_fn=env_fn,
                     eval_episodes=config.eval_episodes, async_envs=config.async_envs, **options)  # fmt: skip


def fine_tune(
    tuner: FineTuner,
    task: str,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    env_fn: EnvFn | None = None,
    episode_steps: int | None = None,
    eval_fn: Callable[[Any], dict[str, Any]] | None = None,
    eval_episodes: int = 0,
    async_envs: bool = False,
) -> dict[str, Any]:
    """Run ``tuner`` on ``task`` into ``run_dir``; the summary.

    ``env_fn`` builds one environment (default: the task's); ``episode_steps`` is its episode length
    (default: the task's). ``eval_fn(agent)`` scores the agent before training, every ``eval_every``
    iterations and at the end (default: ``diffctl.evaluate`` with ``eval_episodes``; none when 0).
    """
    from diffctl.envs.tasks import get_task

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = int(episode_steps or get_task(task).max_episode_steps)
    tuner.agent.task = task
    iterations = math.ceil(tuner.env_steps / (tuner.num_envs * steps))
    logger = MetricsLogger(run_dir, tensorboard=False)
    step, start = restore(run_dir, tuner) if resume else (0, 0)
    logger.truncate_after(step)
    if eval_fn is None and eval_episodes:
        eval_fn = _default_eval(task, eval_episodes)
    envs = make_envs(task, tuner.num_envs, async_envs, env_fn)
    last_eval: dict[str, Any] = {}
    if start == 0 and eval_fn is not None:  # the curve's first point: the agent before fine-tuning
        last_eval = eval_fn(tuner.agent)
        logger.log(0, {f"eval/{k}": v for k, v in last_eval.items()})
    started = time.perf_counter()
    bar = tqdm(range(start, iterations), desc=type(tuner).__name__, disable=not progress, initial=start,
               total=iterations)  # fmt: skip
    try:
        for it in bar:
            batch = tuner.collect(envs, steps, it)
            step += int(batch["env_steps"])
            logs = tuner.update(batch)
            last = it + 1 == iterations
            if eval_fn is not None and (last or (tuner.eval_every and (it + 1) % tuner.eval_every == 0)):
                last_eval = eval_fn(tuner.agent)
                logs.update({f"eval/{k}": v for k, v in last_eval.items()})
            logger.log(step, logs)
            bar.set_postfix(
                success=f"{logs['train/success_rate']:.2f}", ret=f"{logs['train/mean_return']:.1f}"
            )
            if last or (it + 1) % tuner.checkpoint_every == 0:
                save_checkpoint(run_dir, tuner, step, it + 1)
                tuner.agent.save(run_dir / "checkpoint")
                ckpt.prune_step_checkpoints(run_dir / "checkpoints", 2)
    finally:
        envs.close()
        logger.close()
    summary = {
        "checkpoint": str(run_dir / "checkpoint"), "env_steps": step, "iterations": iterations,
        "minutes": round((time.perf_counter() - started) / 60, 2),
        **{f"eval_{k}": v for k, v in last_eval.items()},
    }  # fmt: skip
    ckpt.write_json(run_dir / "summary.json", summary)
    return summary


def _default_eval(task: str, episodes: int) -> Callable[[Any], dict[str, Any]]:
    def run(agent: Any) -> dict[str, Any]:
        from diffctl.envs.evaluate import evaluate

        res = evaluate(agent, task, episodes=episodes, seed=0, n_workers=0)
        return {"success_rate": res["success_rate"], "mean_return": res["mean_return"]}

    return run
