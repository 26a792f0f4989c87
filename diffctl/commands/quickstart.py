"""``diffctl quickstart``: the main job end to end on maze2d-umaze, in a few minutes on a laptop CPU.

Generates a small expert dataset, trains a goal-conditioned diffusion policy through the ``diffctl train``
pipeline (EDM, MLP backbone, goal by classifier-free guidance with goal dropout), evaluates the same
checkpoint with Diffusion Policy's sampler (DDPM, 100 steps) and with a fast one (DPM-Solver++ 2M, 10 NFE),
and writes a table, JSON, a trajectory plot and a rollout video.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diffctl.atomic import write_json

TASK = "maze2d-umaze"


@dataclass(frozen=True)
class Budget:
    """The sizes that set the quickstart's run time and quality.

    ``goal_radius``: the expert gets its next goal once it is this close to the current one. At 0.1 (the
    generator's default is 0.25) the data shows the expert settling at its goal, so the policy learns to stay
    there instead of drifting on, which D4RL's normalized score rewards.
    """

    data_episodes: int = 300
    goal_radius: float = 0.1
    train_steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    eval_episodes: int = 50
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    hidden: int = 256
    depth: int = 3


FULL = Budget()
SMOKE = Budget(data_episodes=16, train_steps=30, batch_size=64, eval_episodes=2, hidden=64, depth=1)
SAMPLERS = (("ddpm", 100, "Diffusion Policy's DDPM-100"), ("dpmpp_2m", 10, "DPM-Solver++ 2M, 10 NFE"))


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="generate maze2d-umaze data, train a diffusion policy, evaluate two samplers (a few minutes)",
        description=__doc__,
    )
    parser.add_argument(
        "--out", default="runs/quickstart", help="output directory (default: runs/quickstart)"
    )
    parser.add_argument(
        "--fast", action="store_true", help="tiny smoke-test budget (seconds; not a real result)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=None, help="evaluation episodes per sampler")
    parser.add_argument("--train-steps", type=int, default=None, help="training steps")
    parser.add_argument("--workers", type=int, default=None, help="rollout processes (default 2)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    budget = SMOKE if args.fast else FULL
    overrides = {"eval_episodes": args.episodes, "train_steps": args.train_steps}
    budget = Budget(**{**asdict(budget), **{k: v for k, v in overrides.items() if v is not None}})
    result = quickstart(Path(args.out), budget, seed=args.seed, workers=args.workers)
    print(format_table(result["evaluations"]))
    print(f"results:    {result['results_path']}")
    print(f"checkpoint: {result['checkpoint']}")
    print(f"re-evaluate: diffctl eval {result['checkpoint']} --solver euler --steps 5")
    print(f"total time: {result['seconds']['total']:.1f} s")
    return 0


def quickstart(out: Path, budget: Budget, seed: int = 0, workers: int | None = None) -> dict[str, Any]:
    """Run the pipeline into ``out``; returns every number it measured (also written to results.json)."""
    import torch

    from diffctl.agents import load
    from diffctl.datasets.generators import generate
    from diffctl.envs.evaluate import evaluate
    from diffctl.train.pipeline import compose_config, run

    torch.set_num_threads(1)  # small batches: one thread is as fast and immune to oversubscription
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    print(f"[1/3] generating {budget.data_episodes} expert episodes of {TASK}")
    generate(
        TASK, out / "data" / f"{TASK}.zarr", episodes=budget.data_episodes, seed=seed, force=True,
        goal_radius=budget.goal_radius,
    ).close()  # fmt: skip
    seconds["data"] = time.perf_counter() - start

    t = time.perf_counter()
    print(f"[2/3] training a goal-conditioned diffusion policy for {budget.train_steps} steps")
    overrides = train_overrides(budget, out, seed)
    summary = run(compose_config(overrides))
    checkpoint = Path(summary["checkpoint"])
    seconds["train"] = time.perf_counter() - t

    evaluations = []
    for i, (solver, steps, label) in enumerate(SAMPLERS):
        t = time.perf_counter()
        print(f"[3/3] evaluating with {label} on {budget.eval_episodes} episodes")
        agent = load(checkpoint, solver=solver, steps=steps)
        res = evaluate(
            agent, TASK, episodes=budget.eval_episodes, seed=seed + 1, n_workers=workers,
            plot_path=out / f"trajectories_{solver}.png", video_path=out / "rollout.mp4" if i == 1 else None,
        )  # fmt: skip
        keep = ("success_rate", "mean_return", "normalized_score", "act_latency_ms_p50", "act_latency_ms_p99",
                "act_latency_ms_mean", "episodes", "plot_path", "video_path")  # fmt: skip
        row = {"sampler": solver, "steps": steps, "nfe": steps, "label": label}
        evaluations.append(
            {**row, **{k: res[k] for k in keep if k in res}, "seconds": time.perf_counter() - t}
        )
    seconds["eval"] = sum(e["seconds"] for e in evaluations)
    seconds["total"] = time.perf_counter() - start
    result = {
        "task": TASK,
        "budget": asdict(budget),
        "seed": seed,
        "checkpoint": str(checkpoint),
        "train_command": "diffctl train " + " ".join(overrides),
        "train": {"final_loss": summary["loss"], "samples_per_s": summary["samples_per_s"]},
        "evaluations": evaluations,
        "seconds": seconds,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    result["results_path"] = str(write_json(out / "results.json", result))
    return result


def train_overrides(budget: Budget, out: Path, seed: int) -> list[str]:
    """The ``diffctl train`` overrides of the quickstart's training run: ``policy=diffusion_mlp`` on the
    generated data, sized by ``budget``, evaluated afterwards by the quickstart itself (eval.episodes=0)."""
    bk = f"{{hidden:{budget.hidden},depth:{budget.depth},embed_dim:64}}"
    return [
        f"task={TASK}", "policy=diffusion_mlp", "sampler=dpmpp_2m", f"seed={seed}",
        f"run_dir={out / 'train'}", f"task.dataset.path={out / 'data' / f'{TASK}.zarr'}",
        f"task.horizon={budget.horizon}", f"task.n_obs_steps={budget.n_obs_steps}",
        f"task.n_action_steps={budget.n_action_steps}", f"policy.backbone_kwargs={bk}",
        f"training.steps={budget.train_steps}", f"training.batch_size={budget.batch_size}",
        f"training.lr={budget.lr}", f"training.warmup_steps={min(100, budget.train_steps // 10)}",
        "training.checkpoint_every=0", "training.tensorboard=false",
        f"training.log_every={max(1, min(100, budget.train_steps))}", "eval.episodes=0",
    ]  # fmt: skip


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of the per-sampler evaluations."""
    cols = ("sampler", "NFE", "success", "norm. score", "act ms p50", "p99", "mean")
    widths = (-10, 4, 8, 11, 10, 8, 7)
    head = " ".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))
    lines = [head, "-" * len(head)]
    for r in rows:
        score = r.get("normalized_score")
        lines.append(
            f"{r['sampler']:<10} {r['nfe']:>4} {r['success_rate']:>8.2f} "
            f"{(f'{score:.1f}' if score is not None else '-'):>11} {r['act_latency_ms_p50']:>10.2f} "
            f"{r['act_latency_ms_p99']:>8.2f} {r['act_latency_ms_mean']:>7.2f}"
        )
    return "\n".join(lines)
