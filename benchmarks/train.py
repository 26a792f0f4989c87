"""Training throughput: samples/s of the full Trainer step (batch gather, loss, backward, AdamW, EMA) per
DiffusionPolicy backbone on maze2d-shaped data (obs 4, goal 2, action 2, To 2, H 16), one CPU thread.

Run: ``PYTHONPATH=. python benchmarks/train.py [--steps 30] [--batch-size 256]``. Writes
benchmarks/results/train.json and train.md. No target: this records where training time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffctl.datasets import EpisodeStore, SequenceDataset
from diffctl.policies import DiffusionPolicy
from diffctl.train import TrainConfig, Trainer
from diffctl.train.pipeline import RESERVED_POLICY_KEYS, compose_config, to_dict

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES = ("diffusion_mlp", "diffusion_unet", "diffusion_transformer")


def _store(steps: int, seed: int) -> EpisodeStore:
    rng = np.random.default_rng(seed)
    ends = np.arange(300, steps + 1, 300)
    data = {
        "observations": rng.normal(size=(steps, 4)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(steps, 2)).astype(np.float32),
        "infos/goal": rng.normal(size=(steps, 2)).astype(np.float32),
    }
    return EpisodeStore.from_arrays(data, ends)


def _policy(name: str, store: EpisodeStore) -> DiffusionPolicy:
    conf = to_dict(compose_config([f"policy={name}"]))["policy"]
    kwargs = {k: v for k, v in conf.items() if k not in RESERVED_POLICY_KEYS}
    agent = DiffusionPolicy(4, 2, goal_dim=2, horizon=16, n_obs_steps=2, n_action_steps=8, **kwargs)
    agent.fit_normalizers(store.array("observations"), store.array("actions"), store.array("infos/goal"))
    return agent


def measure(
    name: str, dataset: SequenceDataset, store: EpisodeStore, steps: int, batch: int
) -> dict[str, Any]:
    agent = _policy(name, store)
    params = sum(p.numel() for p in agent.network.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        base = dict(batch_size=batch, warmup_steps=1, progress=False, tensorboard=False, checkpoint_every=0)
        Trainer(agent, dataset, TrainConfig(steps=3, log_every=3, **base), Path(tmp) / "warm").fit()
        config = TrainConfig(steps=steps, log_every=steps, **base)
        trainer = Trainer(agent, dataset, config, Path(tmp) / "run")
        start = time.perf_counter()
        trainer.fit()
        elapsed = time.perf_counter() - start
    idx = torch.randint(0, len(dataset), (batch,))
    t = time.perf_counter()
    for _ in range(20):
        dataset.get_batch(idx)
    batch_ms = (time.perf_counter() - t) / 20 * 1e3
    return {
        "policy": name,
        "parameters": params,
        "steps": steps,
        "batch_size": batch,
        "seconds": elapsed,
        "samples_per_s": steps * batch / elapsed,
        "ms_per_step": elapsed / steps * 1e3,
        "get_batch_ms": batch_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    store = _store(30_000, seed=0)
    dataset = SequenceDataset(store, horizon=16, n_obs_steps=2, n_action_steps=8, goal="task")
    rows = [measure(name, dataset, store, args.steps, args.batch_size) for name in POLICIES]
    meta = {
        "command": "PYTHONPATH=. python benchmarks/train.py "
        f"--steps {args.steps} --batch-size {args.batch_size}",
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "note": "shared 2-core machine; checkpoints off; includes EMA and the lr schedule",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [
        "# Training throughput (Trainer step, maze2d-shaped data, CPU)",
        "",
        f"`{meta['command']}` — torch {meta['torch']}, {args.threads} thread(s). {meta['note']}.",
        "",
        "| policy | parameters | batch | ms/step | samples/s | get_batch ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['policy']} | {r['parameters']:,} | {r['batch_size']} | {r['ms_per_step']:.1f} | "
        f"{r['samples_per_s']:.0f} | {r['get_batch_ms']:.2f} |"
        for r in rows
    ]
    (RESULTS / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
