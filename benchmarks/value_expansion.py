"""Value-expansion benchmark: TD3+BC with its one-step critic target against the same agent whose target
looks 5 imagined steps ahead through a diffusion world model (DWM-TD3BC) or through the one-step MLP
ensemble (MBPO-style MVE), on the same data, steps and seeds.

Every run goes through the pipeline: the world models with `diffctl train task=<dataset>
world_model=dwm|mlp_ensemble experiment=world_model` (reused when their run directory holds a checkpoint),
the agents with `diffctl train task=<dataset> policy=td3bc experiment=value_expansion seed=<s>
[policy.world_model=<checkpoint> policy.expansion_horizon=5]`. Scores are the final weights' D4RL-normalized
score over the recipe's evaluation episodes; finished runs are reused, so an interrupted benchmark resumes.

    PYTHONPATH=. taskset -c 0 python benchmarks/value_expansion.py --datasets hopper-medium --seeds 0 1
    PYTHONPATH=. python benchmarks/value_expansion.py --fast      # smoke test (tiny budgets, temp dir)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from diffctl.atomic import write_text

VARIANTS = ("none", "dwm", "mlp_ensemble", "synthetic")
DATASETS = ("maze2d-umaze", "hopper-medium", "hopper-medium-replay", "walker2d-medium")
LABELS = {"none": "TD3+BC", "dwm": "TD3+BC + DWM expansion", "mlp_ensemble": "TD3+BC + ensemble expansion",
          "synthetic": "TD3+BC on real + DWM-synthesized data"}  # fmt: skip


def train(overrides: list[str], run_dir: Path) -> Path:
    """``diffctl train`` with ``overrides`` into ``run_dir`` unless a finished run is there already."""
    from diffctl.train.pipeline import compose_config, run

    if not (run_dir / "summary.json").is_file():
        t0 = time.perf_counter()
        run(compose_config([*overrides, f"run_dir={run_dir}", "training.progress=false"]))
        (run_dir / "train_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return run_dir


def world_model(dataset: str, model: str, root: Path, data: list[str], fast: bool) -> Path:
    """The checkpoint of ``model`` trained on ``dataset`` (trained now when ``root`` has none)."""
    extra = ["training.steps=20", "training.warmup_steps=1", "training.checkpoint_every=0"] if fast else []
    args = [f"task={dataset}", f"world_model={model}", "experiment=world_model", *data, *extra]
    return train(args, root / f"{dataset}-{model}") / "checkpoint"


def final_eval(run_dir: Path) -> dict[str, float]:
    """The last ``eval/`` row of a run's metrics."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "eval/mean_return" in r]
    if not evals:
        raise ValueError(f"{run_dir}/metrics.jsonl has no evaluation row")
    last = evals[-1]
    return {k.removeprefix("eval/"): float(v) for k, v in last.items() if k.startswith("eval/")}


def synthetic_store(dataset: str, seed: int, args: argparse.Namespace, data: list[str]) -> Path:
    """Real episodes plus ``--synth-episodes`` imagined ones: the DWM of ``dataset`` driven by the plain
    TD3+BC agent of the same seed (as ``diffctl data synthesize`` does), made when missing."""
    from diffctl.core.registry import load
    from diffctl.datasets.store import EpisodeStore
    from diffctl.envs.termination import termination_fn
    from diffctl.world_models.synthesis import SynthesisSettings, synthesize

    out = args.runs / "synthetic" / f"{dataset}-s{seed}-{args.steps}.zarr"
    if not out.exists():
        policy = Path(agent_run(dataset, "none", seed, args, data)["run_dir"]) / "checkpoint"
        wm = world_model(dataset, "dwm", args.world_models, data, args.fast)
        source = EpisodeStore.open(data[0].split("=", 1)[1])
        settings = SynthesisSettings(episodes=args.synth_episodes, horizon=16, seed=seed)
        origin = {"world_model": str(wm), "policy": str(policy)}
        rule = termination_fn(dataset)
        synthesize(
            load(wm), load(policy), source, out, settings, progress=False, origin=origin, terminal_fn=rule
        )
    return out


def agent_run(dataset: str, variant: str, seed: int, args: argparse.Namespace, data: list[str]) -> dict:
    overrides = [f"task={dataset}", "policy=td3bc", "experiment=value_expansion", f"seed={seed}", *data,
                 f"training.steps={args.steps}", f"eval.episodes={args.episodes}"]  # fmt: skip
    if variant in ("dwm", "mlp_ensemble"):
        ckpt = world_model(dataset, variant, args.world_models, data, args.fast)
        overrides += [f"policy.world_model={ckpt}", f"policy.expansion_horizon={args.horizon}"]
    elif variant == "synthetic":
        overrides.append(f"task.dataset.path={synthetic_store(dataset, seed, args, data)}")
    run_dir = train(overrides, args.runs / f"{dataset}-{variant}-h{args.horizon}-s{seed}-{args.steps}")
    ev = final_eval(run_dir)
    seconds = float((run_dir / "train_seconds.txt").read_text())
    return {"dataset": dataset, "variant": variant, "seed": seed, "steps": args.steps,
            "horizon": args.horizon,
            "normalized_score": ev.get("normalized_score"), "mean_return": ev["mean_return"],
            "success_rate": ev.get("success_rate"), "episodes": int(ev["episodes"]),
            "train_seconds": seconds, "run_dir": str(run_dir)}  # fmt: skip


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def summarize(runs: list[dict]) -> list[dict]:
    """Mean and standard error over seeds per (dataset, variant)."""
    out = []
    keys = {(r["dataset"], r["variant"], r["steps"], r["horizon"]) for r in runs}
    for key in sorted(keys, key=lambda k: (k[0], VARIANTS.index(k[1]), k[2], k[3])):
        rows = [r for r in runs if (r["dataset"], r["variant"], r["steps"], r["horizon"]) == key]
        mean, se = mean_se([r["normalized_score"] for r in rows])
        out.append({"dataset": key[0], "variant": key[1], "steps": key[2], "horizon": key[3], "score": mean,
                    "se": se, "per_seed": [round(r["normalized_score"], 1) for r in rows],
                    "train_seconds": sum(r["train_seconds"] for r in rows) / len(rows)})  # fmt: skip
    return out


def targets(summary: list[dict]) -> list[tuple[str, str, bool]]:
    """Value expansion at least as good as none on at least 3 of 4 datasets (per world model)."""
    rows = []
    for model in ("dwm", "mlp_ensemble"):
        wins, total = 0, 0
        for base in (s for s in summary if s["variant"] == "none"):
            exp = [s for s in summary if s["variant"] == model and s["dataset"] == base["dataset"]
                   and s["steps"] == base["steps"]]  # fmt: skip
            if exp:
                total += 1
                wins += exp[0]["score"] >= base["score"]
        rows.append((f"{LABELS[model]} >= TD3+BC on >= 3 of 4 datasets", f"{wins} of {total}", wins >= 3))
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Value expansion: TD3+BC with and without imagined steps in the critic target", "",
             "; ".join(f"`{c}`" for c in report["commands"]) + f" on {report['machine']}. {report['recipe']}",
             "",
             "| dataset | agent | H | steps | seeds | normalized score | per seed | train s / run |",
             "|---|---|---:|---:|---:|---:|---|---:|"]  # fmt: skip
    for s in report["summary"]:
        h = s["horizon"] if s["variant"] in ("dwm", "mlp_ensemble") else 0
        se = "" if math.isnan(s["se"]) else f" ± {s['se']:.1f}"
        seeds = ", ".join(map(str, s["per_seed"]))
        lines.append(f"| {s['dataset']} | {LABELS[s['variant']]} | {h} | {s['steps']} | {len(s['per_seed'])} "
                     f"| {s['score']:.1f}{se} | {seeds} | {s['train_seconds']:.0f} |")  # fmt: skip
    lines += ["", "## Targets", "", "| target | result | met |", "|---|---|---|"]
    lines += [f"| {name} | {result} | {'yes' if met else 'no'} |" for name, result, met in report["targets"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=5000, help="agent training steps")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per run")
    parser.add_argument("--horizon", type=int, default=5, help="imagined steps in the critic target")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where the dataset stores live")
    parser.add_argument(
        "--runs", type=Path, default=Path("runs/ve"), help="agent runs (reused when finished)"
    )
    parser.add_argument("--world-models", type=Path, default=Path("runs/ve/wm"), help="world-model runs")
    parser.add_argument("--synth-episodes", type=int, default=2000, help="imagined episodes (synthetic)")
    parser.add_argument("--fast", action="store_true", help="smoke-test budget (not a result)")
    parser.add_argument("--out", type=Path, default=None, help="results dir (default benchmarks/results)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.fast:
        tmp = Path(tempfile.mkdtemp(prefix="diffctl-ve-"))
        args.runs, args.world_models, args.out = tmp / "runs", tmp / "wm", args.out or tmp
        args.datasets, args.seeds, args.steps, args.episodes = ["maze2d-umaze"], [0], 20, 1
    out = args.out or Path("benchmarks/results")
    runs = []
    for dataset in args.datasets:
        path = tmp / f"{dataset}.zarr" if args.fast else args.data_dir / f"{dataset}.zarr"
        data = [f"task.dataset.path={path}"] + (["task.dataset.generate.episodes=6"] if args.fast else [])
        for seed in args.seeds:
            for variant in args.variants:
                runs.append(agent_run(dataset, variant, seed, args, data))
                print(
                    json.dumps({k: runs[-1][k] for k in ("dataset", "variant", "seed", "normalized_score")})
                )
    command = " ".join(["PYTHONPATH=. python benchmarks/value_expansion.py", *sys.argv[1:]])
    commands = [command]
    previous = out / "value_expansion.json"
    if previous.is_file() and not args.fast:  # keep rows of other datasets / seeds from earlier calls
        commands = list(dict.fromkeys([*json.loads(previous.read_text()).get("commands", []), command]))
        done = {(r["dataset"], r["variant"], r["seed"], r["steps"], r["horizon"]) for r in runs}
        old = json.loads(previous.read_text())["runs"]
        runs = [
            r for r in old if (r["dataset"], r["variant"], r["seed"], r["steps"], r["horizon"]) not in done
        ] + runs
    summary = summarize(runs)
    report = {"commands": commands, "runs": runs,
              "machine": f"{platform.platform()} (one torch thread), torch {torch.__version__}",
              "recipe": "TD3+BC (`policy=td3bc experiment=value_expansion`): lr 3e-4, batch 256, alpha 2.5; "
                        "expansion through the world models of benchmarks/world_models.py (20k steps; DWM "
                        "samples 8-step segments with DPM-Solver++(2M), 5 steps, one Picard refinement of "
                        "the imagined actions). Synthetic: 2000 imagined 16-step episodes of the plain agent "
                        "of the same seed (action noise 0.1) in the DWM, after the real ones.",
              "summary": summary, "targets": targets(summary)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "value_expansion.json", json.dumps(report, indent=1) + "\n")
    write_text(out / "value_expansion.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
