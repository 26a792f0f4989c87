"""The run every fine-tuning method shares: vector envs, iterations, evaluations, checkpoints, resume.

A ``FineTuner`` (residual PPO, DPPO, D3PO) collects one whole episode in each of ``num_envs`` environments
per iteration (reset together with seeds derived from the run's seed and the iteration) and then updates.
All of an iteration's randomness is drawn from generators seeded by (seed, iteration), so the state between
iterations is only the weights and the optimizers: a resumed run continues exactly as an uninterrupted one
would.

Layout of the run directory (as for ``diffctl train``): ``checkpoints/step_XXXXXXX/`` (the agent plus the
trainer state, step = simulator steps so far), ``checkpoint/`` (the last agent), ``metrics.jsonl``,
``summary.json`` and ``learning_curves.png``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from diffctl.atomic import atomic_dir
from diffctl.core.config import Config
from diffctl.train import checkpoint as ckpt
from diffctl.train.metrics import MetricsLogger

__all__ = ["FineTuneConfig", "FineTuner", "fine_tune", "iteration_seed", "last_success", "make_envs"]

EnvFn = Callable[[], Any]


@dataclass
class FineTuneConfig(Config):
    """What every fine-tuning method in simulation shares: the policy, the budget, the environments, the
    optimization passes, checkpoints and evaluations (``diffctl train finetune=...``)."""

    section: ClassVar[str] = "finetune"

    base: str = ""
    """Checkpoint of the policy to fine-tune (a chunk policy of the run's task)."""
    env_steps: int = 200_000
    """Simulator steps in all (every iteration runs one whole episode in each environment)."""
    num_envs: int = 16
    """Environments stepped together (``gymnasium.vector``)."""
    async_envs: bool = False
    """Step the environments in worker processes (``AsyncVectorEnv``) instead of in this one."""
    epochs: int = 5
    """Passes over each iteration's data."""
    minibatches: int = 4
    """Minibatches per pass."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global norm)."""
    checkpoint_every: int = 10
    """Iterations between checkpoints (the last one is always written)."""
    eval_every: int = 0
    """Iterations between closed-loop evaluations (0: only before training and at the end)."""
    eval_episodes: int = 50
    """Episodes per evaluation (0: none)."""
    seed: int = 0
    """Seeds every iteration's randomness (episodes, sampling noise, minibatches) and new networks."""

    def validate(self) -> None:
        self.require(at_least_one=("env_steps", "num_envs", "epochs", "minibatches", "checkpoint_every"),
                     positive=("max_grad_norm",), non_negative=("eval_every", "eval_episodes"))  # fmt: skip

    def require(
        self,
        at_least_one: tuple[str, ...] = (),
        positive: tuple[str, ...] = (),
        non_negative: tuple[str, ...] = (),
        unit: tuple[str, ...] = (),
    ) -> None:
        """One ValueError naming the first field out of its range: >= 1, > 0, >= 0 or in (0, 1]."""
        checks = [
            (at_least_one, lambda v: v >= 1, ">= 1"), (positive, lambda v: v > 0, "> 0"),
            (non_negative, lambda v: v >= 0, ">= 0"), (unit, lambda v: 0 < v <= 1, "in (0, 1]"),
        ]  # fmt: skip
        for keys, ok, expected in checks:
            for key in keys:
                if not ok(getattr(self, key)):
                    raise ValueError(f"finetune.{key} must be {expected}, got {getattr(self, key)}")


def iteration_seed(seed: int, iteration: int) -> int:
    """The seed of everything random in one iteration."""
    return (int(seed) * 1_000_003 + int(iteration)) % (2**63)


def make_envs(task: str, num_envs: int, async_envs: bool, env_fn: EnvFn | None) -> Any:
    import gymnasium as gym

    from diffctl.envs.registry import make_env

    fns = [env_fn or (lambda: make_env(task)) for _ in range(num_envs)]
    return gym.vector.AsyncVectorEnv(fns) if async_envs else gym.vector.SyncVectorEnv(fns)


def last_success(infos: dict[str, Any], num_envs: int) -> np.ndarray:
    """The ``success`` (or ``is_success``) flag of each environment in a vector env's info dict."""
    for key in ("success", "is_success"):
        if key in infos:
            present = infos.get(f"_{key}", np.ones(num_envs, bool))
            return np.where(present, np.asarray(infos[key], dtype=bool), False)
    return np.zeros(num_envs, bool)


class FineTuner:
    """One fine-tuning method for ``fine_tune``: its ``config`` (budget, environments, checkpoints), the
    ``agent`` it improves (saved and evaluated as is), ``collect`` (one iteration's rollouts), ``update`` (its
    optimization step, returning scalars to log) and the trainer state beyond the agent's weights
    (optimizers, critics) for checkpoints."""

    agent: Any
    config: FineTuneConfig

    def collect(self, envs: Any, steps: int, iteration: int) -> dict[str, Any]:
        raise NotImplementedError

    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise NotImplementedError

    def load_state(self, agent_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        raise NotImplementedError


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
    cfg = tuner.config
    iterations = math.ceil(cfg.env_steps / (cfg.num_envs * steps))
    logger = MetricsLogger(run_dir, tensorboard=False)
    step, start = restore(run_dir, tuner) if resume else (0, 0)
    logger.truncate_after(step)
    if eval_fn is None and cfg.eval_episodes:
        eval_fn = _default_eval(task, cfg.eval_episodes)
    envs = make_envs(task, cfg.num_envs, cfg.async_envs, env_fn)
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
            if eval_fn is not None and (last or (cfg.eval_every and (it + 1) % cfg.eval_every == 0)):
                last_eval = eval_fn(tuner.agent)
                logs.update({f"eval/{k}": v for k, v in last_eval.items()})
            logger.log(step, logs)
            bar.set_postfix(
                success=f"{logs['train/success_rate']:.2f}", ret=f"{logs['train/mean_return']:.1f}"
            )
            if last or (it + 1) % cfg.checkpoint_every == 0:
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
