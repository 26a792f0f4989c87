"""Offline RL benchmark: DiffusionQL, IDQL and EDP (and d3rlpy's IQL / TD3+BC when installed) trained on
the same locally generated datasets with the same step budget; D4RL normalized score of the FINAL
checkpoint (Trainer EMA weights) averaged over seeds and evaluation episodes, training steps/s and act
latency (batch 1, one thread, from ``dc.evaluate``). No best-during-training numbers are reported.

Maze datasets are generated when missing (``generate(name, size="small")``); locomotion datasets are used
only when ``data/<name>.zarr`` already exists (their SAC generation takes hours), otherwise skipped.

    python benchmarks/offline_rl.py [--datasets maze2d-umaze hopper-medium ...] [--agents idql edp ...]
        [--steps 2000] [--seeds 0 1] [--episodes 10] [--out benchmarks/results]
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

from diffctl.datasets import EpisodeStore
from diffctl.policies.offline_rl import EDP, IDQL, DiffusionQL, TransitionDataset
from diffctl.train import TrainConfig, Trainer

DIFFUSION = {"diffusion_ql": DiffusionQL, "idql": IDQL, "edp": EDP}
D3RLPY = ("d3rlpy_iql", "d3rlpy_td3bc")
MAZES = ("maze2d-umaze", "maze2d-medium", "maze2d-large")


def task_of(dataset: str) -> str:
    return dataset if dataset in MAZES else dataset.split("-")[0]


def open_store(name: str, data_dir: Path) -> EpisodeStore | None:
    """The dataset's store; mazes are generated when missing, locomotion is never generated here."""
    path = data_dir / f"{name}.zarr"
    if path.exists():
        return EpisodeStore.open(path)
    if name not in MAZES:
        return None
    from diffctl.datasets.generators import generate

    generate(name, path, size="small")
    return EpisodeStore.open(path)


def train_diffusion(
    name: str, ds: TransitionDataset, steps: int, batch: int, seed: int, run_dir: Path, reward_norm: str
) -> tuple[Any, float]:
    agent = DIFFUSION[name](ds.obs_dim, ds.action_dim, goal_dim=ds.goal_dim, seed=seed,
                            reward_normalization=reward_norm)  # fmt: skip
    agent.fit(ds)
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=3e-4, warmup_steps=0, weight_decay=0.0, seed=seed,
                      checkpoint_every=0, progress=False, tensorboard=False, log_every=100,
                      device="cpu")  # fmt: skip
    start = time.perf_counter()
    Trainer(agent, ds, cfg, run_dir).fit()
    elapsed = time.perf_counter() - start
    import diffctl as dc

    return dc.load(run_dir / "checkpoint"), steps / elapsed


class D3rlpyAgent:
    """``act`` wrapper around a trained d3rlpy algorithm (observation = state, then goal)."""

    def __init__(self, algo: Any) -> None:
        self.algo = algo

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(self.algo.predict(np.asarray(obs, np.float32)[None])[0], dtype=np.float32)


def train_d3rlpy(
    name: str, store: EpisodeStore, goal: bool, steps: int, batch: int, seed: int
) -> tuple[Any, float]:
    import d3rlpy

    obs = np.asarray(store.array("observations"), np.float32)
    if goal:
        obs = np.concatenate([obs, np.asarray(store.array("infos/goal"), np.float32)], axis=1)
    terminals = np.asarray(store.array("terminals"), bool)
    timeouts = np.zeros_like(terminals)
    timeouts[np.asarray(store.episode_ends) - 1] = True
    timeouts &= ~terminals
    dataset = d3rlpy.dataset.MDPDataset(
        obs, np.asarray(store.array("actions"), np.float32), np.asarray(store.array("rewards"), np.float32),
        terminals.astype(np.float32), timeouts.astype(np.float32),
    )  # fmt: skip
    d3rlpy.seed(seed)
    config = (
        d3rlpy.algos.IQLConfig(batch_size=batch)
        if name == "d3rlpy_iql"
        else d3rlpy.algos.TD3PlusBCConfig(batch_size=batch)
    )
    algo = config.create(device="cpu:0")
    start = time.perf_counter()
    algo.fit(dataset, n_steps=steps, n_steps_per_epoch=steps, show_progress=False, save_interval=10**9)
    return D3rlpyAgent(algo), steps / (time.perf_counter() - start)


def run_one(
    name: str, dataset: str, store: EpisodeStore, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    import diffctl as dc

    goal = dataset in MAZES
    reward_norm = "none" if goal else "returns"
    with tempfile.TemporaryDirectory(prefix="offline-rl-") as tmp:
        if name in DIFFUSION:
            ds = TransitionDataset(store, goal="task" if goal else None)
            agent, sps = train_diffusion(name, ds, args.steps, args.batch_size, seed, Path(tmp), reward_norm)
        else:
            agent, sps = train_d3rlpy(name, store, goal, args.steps, args.batch_size, seed)
        result = dc.evaluate(agent, task_of(dataset), episodes=args.episodes, seed=1000 + seed, n_workers=1)
    return {
        "agent": name, "dataset": dataset, "seed": seed, "steps": args.steps, "batch_size": args.batch_size,
        "train_steps_per_s": sps, "normalized_score": result["normalized_score"],
        "normalized_scores": result["normalized_scores"], "mean_return": result["mean_return"],
        "success_rate": result["success_rate"], "act_latency_ms_p50": result["act_latency_ms_p50"],
        "act_latency_ms_p99": result["act_latency_ms_p99"], "episodes": args.episodes,
    }  # fmt: skip


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds (and, through ``normalized_scores``, over episodes) per dataset and agent."""
    out = []
    keys = sorted({(r["dataset"], r["agent"]) for r in rows if "normalized_score" in r})
    for dataset, agent in keys:
        group = [
            r for r in rows if r["dataset"] == dataset and r["agent"] == agent and "normalized_score" in r
        ]
        scores = np.concatenate([np.asarray(r["normalized_scores"], float) for r in group])
        out.append({
            "dataset": dataset, "agent": agent, "seeds": [r["seed"] for r in group],
            "episodes_total": int(scores.size), "normalized_score_mean": float(scores.mean()),
            "normalized_score_sem": (
                float(scores.std(ddof=1) / np.sqrt(scores.size)) if scores.size > 1 else None
            ),
            "success_rate": float(np.mean([r["success_rate"] for r in group])),
            "train_steps_per_s": float(np.mean([r["train_steps_per_s"] for r in group])),
            "act_latency_ms_p50": float(np.mean([r["act_latency_ms_p50"] for r in group])),
            "act_latency_ms_p99": float(np.mean([r["act_latency_ms_p99"] for r in group])),
        })  # fmt: skip
    return out


def edp_speedups(summary: list[dict[str, Any]]) -> dict[str, float]:
    """EDP training steps/s over DiffusionQL's, per dataset (same data, steps and batch)."""
    speed = {(s["dataset"], s["agent"]): s["train_steps_per_s"] for s in summary}
    return {
        d: speed[(d, "edp")] / speed[(d, "diffusion_ql")]
        for d, a in speed
        if a == "edp" and (d, "diffusion_ql") in speed
    }


def markdown(
    summary: list[dict[str, Any]], skipped: list[str], speedups: dict[str, float], meta: dict
) -> str:
    lines = [
        "# Offline RL: final-checkpoint D4RL normalized scores",
        "",
        f"`{meta['command']}` on {meta['machine']} (CPU, one torch thread, niced, shared machine).",
        f"{meta['steps']} training steps, batch {meta['batch_size']}, seeds {meta['seeds']}, "
        f"{meta['episodes']} evaluation episodes per seed. Score = final checkpoint (Trainer EMA weights), "
        "mean over seeds and episodes (± standard error over episodes); no best-during-training selection.",
        "",
        "| dataset | agent | normalized score | success | train steps/s | act p50 ms | act p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        sem = f" ± {s['normalized_score_sem']:.1f}" if s["normalized_score_sem"] is not None else ""
        lines.append(
            f"| {s['dataset']} | {s['agent']} | {s['normalized_score_mean']:.1f}{sem} | "
            f"{s['success_rate']:.2f} | "
            f"{s['train_steps_per_s']:.1f} | {s['act_latency_ms_p50']:.1f} | {s['act_latency_ms_p99']:.1f} |"
        )
    lines += ["", "EDP training speed-up over DiffusionQL (same data, steps, batch): "
              + (", ".join(f"{d}: {v:.2f}x" for d, v in speedups.items()) or "not measured")]  # fmt: skip
    if skipped:
        lines += ["", "Skipped:", *[f"- {s}" for s in skipped]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["maze2d-umaze"])
    parser.add_argument("--agents", nargs="+", default=[*DIFFUSION, *D3RLPY])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    unknown = sorted(set(args.agents) - set(DIFFUSION) - set(D3RLPY))
    if unknown:
        raise ValueError(f"unknown agents {unknown}; valid: {[*DIFFUSION, *D3RLPY]}")
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for dataset in args.datasets:
        store = open_store(dataset, args.data_dir)
        if store is None:
            skipped.append(
                f"{dataset}: {args.data_dir / (dataset + '.zarr')} does not exist (generate it first)"
            )
            continue
        for name in args.agents:
            if name in D3RLPY:
                try:
                    import d3rlpy  # noqa: F401
                except ImportError:
                    skipped.append(f"{dataset} / {name}: d3rlpy is not installed")
                    continue
            for seed in args.seeds:
                try:
                    row = run_one(name, dataset, store, args, seed)
                except Exception as err:  # a peer library failing must not hide the other results
                    if name in DIFFUSION:
                        raise
                    skipped.append(f"{dataset} / {name} seed {seed}: {type(err).__name__}: {err}")
                    continue
                print(json.dumps({k: v for k, v in row.items() if k != "normalized_scores"}), flush=True)
                rows.append(row)
    summary = summarize(rows)
    speedups = edp_speedups(summary)
    meta = {
        "command": "python benchmarks/offline_rl.py " + " ".join(os.sys.argv[1:]),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}",
        "steps": args.steps, "batch_size": args.batch_size, "seeds": args.seeds, "episodes": args.episodes,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "summary": summary, "edp_speedup": speedups, "runs": rows, "skipped": skipped}
    for path, text in ((args.out / "offline_rl.json", json.dumps(payload, indent=2)),
                       (args.out / "offline_rl.md", markdown(summary, skipped, speedups, meta))):  # fmt: skip
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(markdown(summary, skipped, speedups, meta))


if __name__ == "__main__":
    main()
