"""Probe an offline RL agent's critic: how much does IQL's policy extraction gain from its advantages?

Fits a Gaussian actor (ReLU 256x2, tanh mean, state-independent log std; Adam with a cosine schedule, as
d3rlpy's IQL actor) by advantage-weighted regression to the agent's *frozen* critic: each dataset transition
is weighted by ``min(exp(beta * (Q_target(s, a) - V(s))), 100)``, then the greedy action ``tanh(mean)`` is
scored with the benchmark's episodes. ``beta 0`` is plain behaviour cloning, so the difference between the two
is what the critic's advantages are worth, independent of the diffusion actor.

    python benchmarks/critic_probe.py AGENT_DIR --dataset hopper-medium [--beta 3] [--steps 20000]
        [--seed 0] [--episodes 10] [--out FILE.json]

Advantages need a value net: IDQL agents (DiffusionQL and EDP have no V).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diffctl.atomic import write_json
from diffctl.policies.offline_rl import IDQL, TransitionDataset
from diffctl.policies.offline_rl.common import Transitions, finite_non_negative
from diffctl.policies.offline_rl.idql import AWR_MAX_WEIGHT, awr_weights


def advantages(agent: Any, batch: Transitions, chunk: int = 8192) -> torch.Tensor:
    """``IDQL.advantage`` (frozen critic) of every transition of ``batch``, ``chunk`` rows at a time."""
    if not isinstance(agent, IDQL):
        raise ValueError(f"{type(agent).__name__} has no value net; the probe needs V(s) (use an IDQL agent)")
    rows = range(0, len(batch.s), chunk)
    return torch.cat([agent.advantage(batch.s[i : i + chunk], batch.a[i : i + chunk]) for i in rows])


class GaussianProbe(nn.Module):
    """d3rlpy-style Gaussian actor on the agent's normalized state; ``act`` is the greedy ``tanh(mean)``."""

    def __init__(self, agent: Any, hidden: int = 256) -> None:
        super().__init__()
        self.agent = agent
        self.mean = nn.Sequential(
            nn.Linear(agent.state_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, agent.action_dim),
        )  # fmt: skip
        self.log_std = nn.Parameter(torch.zeros(agent.action_dim))

    def log_prob(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        std = self.log_std.clamp(-5.0, 2.0).exp()
        return torch.distributions.Normal(torch.tanh(self.mean(state)), std).log_prob(action).sum(-1)

    def reset(self, seed: int | None = None) -> None:
        pass

    @torch.no_grad()
    def act(self, obs: Any) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs, np.float32))[None]
        o, g = self.agent._split(x)
        action = torch.tanh(self.mean(self.agent._state(o, g)))
        return self.agent.normalizer("action").unnormalize(action)[0].numpy()


def fit_probe(
    agent: Any, dataset: TransitionDataset, beta: float, steps: int, seed: int = 0, batch_size: int = 256,
    lr: float = 1e-3, progress: bool = False,
) -> tuple[GaussianProbe, dict[str, float]]:  # fmt: skip
    """Fit the Gaussian probe by AWR with temperature ``beta`` on the agent's frozen advantages."""
    beta = finite_non_negative("probe beta", beta)
    states = agent.transitions(dataset.get_batch(np.arange(len(dataset))))
    adv = advantages(agent, states)
    weights = awr_weights(adv, beta)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = GaussianProbe(agent)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    rng = np.random.default_rng(seed)
    iterator: Any = range(steps)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc=f"probe beta={beta:g}", unit="step")
    for _ in iterator:
        idx = torch.from_numpy(rng.integers(0, len(dataset), batch_size))
        loss = -(weights[idx] * probe.log_prob(states.s[idx], states.a[idx])).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    clipped = float((weights >= AWR_MAX_WEIGHT).float().mean())
    stats = {"advantage_mean": float(adv.mean()), "advantage_std": float(adv.std()),
             "weight_mean": float(weights.mean()), "weight_clipped_frac": clipped}  # fmt: skip
    return probe, stats


def main() -> None:
    import diffctl as dc
    from diffctl.bench.offline_rl import MAZES, evaluate, open_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("agent", type=Path, help="a saved IDQL agent directory")
    parser.add_argument("--dataset", required=True, help="the dataset the agent was trained on")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--beta", type=float, default=3.0, help="AWR temperature (IQL's locomotion value: 3)")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0, help="probe seed (episodes: 1000 + seed)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = open_store(args.dataset, args.data_dir)
    if store is None:
        raise SystemExit(f"no dataset {args.data_dir / (args.dataset + '.zarr')}")
    agent = dc.load(args.agent)
    dataset = TransitionDataset(store, goal="task" if args.dataset in MAZES else None)
    start = time.perf_counter()
    probe, stats = fit_probe(agent, dataset, args.beta, args.steps, args.seed, progress=True)
    result = evaluate(probe, args.dataset, args.episodes, args.seed)
    row = {"agent": str(args.agent), "dataset": args.dataset, "beta": args.beta, "steps": args.steps,
           "seed": args.seed, "normalized_score": result["normalized_score"], **stats,
           "seconds": time.perf_counter() - start}  # fmt: skip
    if args.out:
        write_json(args.out, row)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
