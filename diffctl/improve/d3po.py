"""D3PO (Yang et al. 2024): fine-tune a diffusion policy's denoising chain from pairwise episode preferences.

Environments run in pairs from the same episode seed; each pair's two episodes are compared (by return, or
success first), and every fine-tuned denoising transition of the preferred episode is pushed up against the
aligned transition of the other by DPO's objective ``-log sigmoid(beta ((log pi_w - log ref_w) - (log pi_l -
log ref_l)))``, with ``ref`` the frozen policy before fine-tuning. No reward model and no critic: only the
preference. The chain and the rollouts are DPPO's (``diffctl.improve.dppo``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from diffctl.core.modules import eval_mode
from diffctl.core.registry import load
from diffctl.improve.dppo import (
    ChainConfig,
    DenoisingChain,
    bc_loss,
    collect_chains,
    load_policy,
    require_chain_policy,
)
from diffctl.improve.finetune import FineTuner
from diffctl.train import checkpoint as ckpt

__all__ = ["D3PO", "D3POConfig", "preferred_pairs"]


@dataclass
class D3POConfig(ChainConfig):
    """DPO through the denoising chain from pairwise episode preferences (``diffctl train finetune=d3po``)."""

    beta: float = 0.1
    """DPO temperature on the per-transition log-likelihood ratios."""
    preference: Literal["return", "success"] = "return"
    """Compare a pair by episode return, or by success first and return on ties."""

    def validate(self) -> None:
        super().validate()
        if self.num_envs % 2:
            raise ValueError(
                f"finetune.num_envs must be even (environments run in pairs), got {self.num_envs}"
            )
        self.require(positive=("beta",))


def preferred_pairs(returns: np.ndarray, success: np.ndarray, preference: str) -> list[tuple[int, int]]:
    """(winner, loser) environment indices of each pair (2i, 2i + 1) whose episodes differ; ties dropped."""
    score = np.asarray(returns, dtype=np.float64)
    if preference == "success":
        score = score + 1e9 * np.asarray(success, dtype=np.float64)
    pairs = []
    for i in range(0, len(score) - 1, 2):
        if score[i] != score[i + 1]:
            pairs.append((i, i + 1) if score[i] > score[i + 1] else (i + 1, i))
    return pairs


class D3PO(FineTuner):
    """D3PO on a ``DiffusionPolicy`` (module docstring)."""

    def __init__(self, config: D3POConfig, policy: Any, bc_data: Any = None) -> None:
        require_chain_policy(policy)
        if config.bc_coef > 0 and bc_data is None:
            raise ValueError("finetune.bc_coef > 0 needs the policy's training data (the run's task dataset)")
        self.config, self.bc_data, self.agent = config, bc_data, policy
        policy.sampler = policy.sampler.replace(solver="ddpm", steps=config.denoising_steps, options={})
        self.reference = copy.deepcopy(policy)  # the frozen policy before fine-tuning
        self.chain = DenoisingChain(policy, config.denoising_steps, config.min_std)
        self.ref_chain = DenoisingChain(self.reference, config.denoising_steps, config.min_std)
        self.optimizer = torch.optim.Adam(policy.network.parameters(), lr=config.actor_lr)

    def collect(self, envs: Any, steps: int, iteration: int) -> dict[str, Any]:
        return collect_chains(
            self.agent,
            self.chain,
            envs,
            steps,
            self.config.seed,
            iteration,
            self.config.num_envs,
            paired=True,
        )

    def pair_transitions(self, batch: dict[str, Any]) -> dict[str, Any] | None:
        """The fine-tuned transitions of every preferred and rejected episode, aligned decision by decision
        and step by step, with their reference log-likelihoods (None when no pair differs)."""
        cfg = self.config
        pairs = preferred_pairs(batch["episode_return"], batch["episode_success"], cfg.preference)
        if not pairs:
            return None
        win, lose = (torch.tensor(v) for v in zip(*pairs, strict=True))
        both = batch["alive"][:, win] & batch["alive"][:, lose]  # (D, P): decisions both episodes made
        d, j = both.nonzero(as_tuple=True)
        ks = torch.arange(self.chain.steps - cfg.ft_steps, self.chain.steps)
        rows = torch.arange(len(d)).repeat_interleave(len(ks))
        k = ks.repeat(len(d))
        out: dict[str, Any] = {"k": k, "pairs": len(pairs)}
        for name, env in (("win", win[j]), ("lose", lose[j])):
            hist = batch["hist"][d, env][rows]
            states = batch["states"][d, env][rows]  # (N, K + 1, H, Da)
            x, x_next = states[torch.arange(len(rows)), k], states[torch.arange(len(rows)), k + 1]
            with torch.no_grad(), eval_mode(self.reference.network):
                ref = self.ref_chain.log_prob(hist, x, x_next, k)
            out[name] = (hist, x, x_next, ref)
        return out

    def logits(self, sides: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
        """``beta ((log pi - log ref)(win) - (log pi - log ref)(lose))`` of the transitions ``idx``."""
        margin = []
        for name in ("win", "lose"):
            hist, x, x_next, ref = sides[name]
            margin.append(self.chain.log_prob(hist[idx], x[idx], x_next[idx], sides["k"][idx]) - ref[idx])
        return self.config.beta * (margin[0] - margin[1])

    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        cfg, p = self.config, self.agent
        sides = self.pair_transitions(batch)
        logs: dict[str, float] = {
            "pairs": float(sides["pairs"] if sides else 0),
            "train/success_rate": float(batch["episode_success"].mean()),
            "train/mean_return": float(batch["episode_return"].mean()),
        }
        if sides is None:
            return logs
        n = len(sides["k"])
        size = max(1, math.ceil(n / cfg.minibatches))
        losses, accuracy, bcs = [], [], []
        with eval_mode(p.network):
            for _ in range(cfg.epochs):
                order = torch.randperm(n, generator=batch["generator"])
                for s in range(0, n, size):
                    logits = self.logits(sides, order[s : s + size])
                    loss = -F.logsigmoid(logits).mean()
                    if cfg.bc_coef > 0:
                        bc = bc_loss(p, self.bc_data, cfg.bc_batch, batch["generator"])
                        loss = loss + cfg.bc_coef * bc
                        bcs.append(float(bc.detach()))
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(p.network.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    losses.append(float(loss.detach()))
                    accuracy.append(float((logits.detach() > 0).float().mean()))
        logs.update(dpo_loss=float(np.mean(losses)), implicit_accuracy=float(np.mean(accuracy)))
        if bcs:
            logs["bc_loss"] = float(np.mean(bcs))
        return logs

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = ckpt.flatten_optimizer(self.optimizer.state_dict())
        return tensors, {"optimizer": meta}

    def load_state(self, agent_dir: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.agent.network.load_state_dict(load(agent_dir).network.state_dict())
        self.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, meta["optimizer"]))


def finetune_d3po(
    config: D3POConfig,
    task: str,
    run_dir: str | Path,
    *,
    env_fn: Any = None,
    bc_data: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Fine-tune ``config.base`` on ``task`` with D3PO into ``run_dir`` (``fine_tune``'s options)."""
    from diffctl.improve.finetune import fine_tune

    policy = load_policy(config, None if env_fn else task)
    return fine_tune(D3PO(config, policy, bc_data), task, run_dir, env_fn=env_fn, **options)
