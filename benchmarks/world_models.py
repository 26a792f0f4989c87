"""World-model benchmark: open-loop prediction error on held-out episodes and imagined steps per second,
the diffusion world model (DWM) against the one-step MLP ensemble and a persistence baseline.

Both models are trained through the pipeline (`diffctl train task=<dataset> world_model=dwm|mlp_ensemble
experiment=world_model`), which holds out the same 10% of episodes. From windows that start in those episodes
each model imagines 32 steps under the logged actions; errors at horizons 1, 8, 16 and 32 are RMSEs of the
states in units of the dataset's per-dimension standard deviation, and of the rewards in units of their
standard deviation. Persistence predicts the start state throughout and the mean reward of the data. Speed:
imagined steps per second of a 32-step rollout at batch 1 and 256 on one thread.

    PYTHONPATH=. taskset -c 0 python benchmarks/world_models.py --datasets maze2d-umaze hopper-medium
    PYTHONPATH=. python benchmarks/world_models.py --fast          # smoke test (tiny budgets, temp dir)

Offline policy evaluation (``--ope-sac RUN``, locomotion datasets): the SAC checkpoints of the run that
generated the data (``~/.cache/diffctl/sac/<task>-seed0-steps200000``) are a ladder of policies from random
to better than the data. Each one's true return is measured in the simulator from 10 seeded starts; its
imagined return is the sum of predicted rewards of a closed-loop rollout of up to 1000 steps in each world
model from the same start states, stopped at a predicted terminal. Reported: Spearman rank correlation and
mean absolute error.

Planning through the model (``--plan POLICY_CHECKPOINT``): a diffusion policy of the dataset alone, the
same policy with as many solver steps as fit in the planner's act time, and ``ImaginationAgent`` (best of 8
chunks by DWM-imagined return), each scored in the simulator.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffctl.atomic import write_text

HORIZONS = (1, 8, 16, 32)
MODELS = ("dwm", "mlp_ensemble")


def train(dataset: str, model: str, run_dir: Path, steps: int | None, data_dir: Path) -> Path:
    """Train through the pipeline into ``run_dir``; a finished run there (``--runs`` of an earlier call) is
    reused."""
    from diffctl.train.pipeline import compose_config, run

    if (run_dir / "train_seconds.txt").is_file() and (run_dir / "checkpoint").is_dir():
        return run_dir / "checkpoint"

    overrides = [
        f"task={dataset}",
        f"world_model={model}",
        "experiment=world_model",
        f"run_dir={run_dir}",
        f"task.dataset.path={data_dir / (dataset + '.zarr')}",
        "training.progress=false",
    ]
    if steps is not None:
        overrides += [f"training.steps={steps}", "training.warmup_steps=10", "training.checkpoint_every=0"]
    t0 = time.perf_counter()
    run(compose_config(overrides))
    (run_dir / "train_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return run_dir / "checkpoint"


def held_out_windows(model: Any, length: int, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Up to ``count`` windows of ``length`` steps starting in the model's held-out episodes."""
    from diffctl.datasets import EpisodeStore
    from diffctl.world_models.data import WorldModelData

    store = EpisodeStore.open(model.dataset["path"])
    goal = "infos/goal" if "infos/goal" in store.keys else None  # goal tasks: the goal is part of the state
    data = WorldModelData(store, horizon=length, goal_key=goal)
    if data.state_dim != model.state_dim:
        raise ValueError(
            f"{model.dataset['path']} gives {data.state_dim}-d states, the model has {model.state_dim}"
        )
    data.hold_out(model.config.held_out)
    rng = np.random.default_rng(seed)
    starts = rng.choice(data.validation, size=min(count, len(data.validation)), replace=False)
    batch = data.windows(np.sort(starts))
    std = {"obs": data.obs.std(0) + 1e-6, "reward": float(data.rewards.std() + 1e-6)}
    arrays = {k: v.numpy() for k, v in batch.items()}
    return {
        **arrays,
        "obs_std": std["obs"],
        "reward_std": std["reward"],
        "reward_mean": float(data.rewards.mean()),
    }


def errors(
    pred_obs: np.ndarray, pred_rew: np.ndarray, w: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    out = {}
    for h in HORIZONS:
        ds = (pred_obs[:, h - 1] - w["next_obs"][:, h - 1]) / w["obs_std"]
        dr = (pred_rew[:, h - 1] - w["rewards"][:, h - 1]) / w["reward_std"]
        out[str(h)] = {
            "state_rmse": float(np.sqrt((ds**2).mean())),
            "reward_rmse": float(np.sqrt((dr**2).mean())),
        }
    return out


def speed(model: Any, batch: int, steps: int = 32, repeats: int = 3) -> float:
    obs = torch.zeros(batch, model.state_dim)
    actions = torch.zeros(batch, steps, model.action_dim)
    model.rollout(obs, actions)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.rollout(obs, actions, generator=torch.Generator().manual_seed(0))
        best = min(best, time.perf_counter() - t0)
    return batch * steps / best


def bench_dataset(
    dataset: str, root: Path, steps: int | None, windows: int, data_dir: Path
) -> dict[str, Any]:
    from diffctl.agents import load

    rows: dict[str, Any] = {"dataset": dataset, "models": {}}
    ref = None
    for name in MODELS:
        ckpt = train(dataset, name, root / f"{dataset}-{name}", steps, data_dir)
        model = load(ckpt)
        w = held_out_windows(model, max(HORIZONS), windows)
        ref = ref or w
        out = model.rollout(w["obs"], w["actions"], generator=torch.Generator().manual_seed(0))
        rows["models"][name] = {
            "errors": errors(out["observations"].numpy(), out["rewards"].numpy(), w),
            "steps_per_s": {str(b): speed(model, b) for b in (1, 256)},
            "train_seconds": float((root / f"{dataset}-{name}" / "train_seconds.txt").read_text()),
            "params": sum(p.numel() for p in model.network.parameters()),
            "windows": len(w["obs"]),
            "command": f"diffctl train task={dataset} world_model={name} experiment=world_model",
        }
        print(json.dumps({"dataset": dataset, "model": name, **rows["models"][name]["errors"]}), flush=True)
    assert ref is not None
    persist_obs = np.repeat(ref["obs"][:, None], max(HORIZONS), axis=1)
    persist_rew = np.full(ref["rewards"].shape, ref["reward_mean"])
    rows["models"]["persistence"] = {"errors": errors(persist_obs, persist_rew, ref)}
    return rows


class SACChunks:
    """A stable-baselines3 SAC policy as a one-action chunk policy (deterministic actions)."""

    n_obs_steps, n_action_steps, goal_dim = 1, 1, 0

    def __init__(self, model: Any, task: str) -> None:
        self.model, self.task = model, task
        self.obs_dim = int(model.observation_space.shape[0])
        self.action_dim = int(model.action_space.shape[0])

    def predict_chunk(self, hist: Any) -> torch.Tensor:
        obs = np.asarray(hist, dtype=np.float32)[:, -1]
        actions, _ = self.model.predict(obs, deterministic=True)
        return torch.as_tensor(np.asarray(actions, np.float32))[:, None]


def true_returns(
    model: Any, task: str, starts: int, horizons: tuple[int, ...], seed: int = 20_000
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per seeded start: the start observation and the simulated undiscounted return of the first ``h``
    steps, for each ``h`` of ``horizons``."""
    from diffctl.envs.registry import make_env

    env = make_env(task)
    obs0, rewards = [], []
    for i in range(starts):
        obs, _ = env.reset(seed=seed + i)
        obs0.append(obs)
        episode, done = [], False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            episode.append(float(reward))
            done = terminated or truncated
        rewards.append(np.asarray(episode))
    env.close()
    return np.asarray(obs0, np.float32), {h: np.array([r[:h].sum() for r in rewards]) for h in horizons}


OPE_HORIZONS = (100, 1000)


def ope_rows(dataset: str, root: Path, sac_run: Path, every: int, starts: int) -> dict[str, Any]:
    """True vs imagined returns of the SAC checkpoints of ``sac_run`` (every ``every``-th), over the first
    100 steps and over whole episodes (up to 1000 steps)."""
    from diffctl.agents import load
    from diffctl.datasets.generators.locomotion import checkpoints, load_checkpoint
    from diffctl.envs.termination import termination_fn
    from diffctl.world_models.ope import imagined_returns, spearman

    task = dataset.split("-")[0]
    models = {name: load(root / f"{dataset}-{name}" / "checkpoint") for name in MODELS}
    rule = termination_fn(task)
    variants: list[tuple[str, str, Any]] = [(name, name, None) for name in MODELS]
    if rule is not None:  # the same rollouts stopped by the task's known termination rule
        variants += [(f"{name}+rule", name, rule) for name in MODELS]
    rows = []
    for ckpt in checkpoints(sac_run)[every - 1 :: every]:
        policy = load_checkpoint(task, ckpt["path"])
        obs0, true = true_returns(policy, task, starts, OPE_HORIZONS)
        row: dict[str, Any] = {"step": int(ckpt["step"])}
        for h in OPE_HORIZONS:
            row[f"true_{h}"] = float(true[h].mean())
            for label, name, fn in variants:
                g = torch.Generator().manual_seed(0)
                est = imagined_returns(
                    models[name], SACChunks(policy, task), obs0, h, terminal_fn=fn, generator=g
                )
                row[f"{label}_{h}"] = float(est.mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for h in OPE_HORIZONS:
        true = np.array([r[f"true_{h}"] for r in rows])
        for name, _, _ in variants:
            est = np.array([r[f"{name}_{h}"] for r in rows])
            mae = float(np.mean(np.abs(est - true)))
            summary[f"{name}_{h}"] = {
                "model": name,
                "horizon": h,
                "spearman": spearman(est, true),
                "mae": mae,
            }
    return {"dataset": dataset, "rows": rows, "summary": summary, "starts": starts}


def plan_rows(
    dataset: str,
    root: Path,
    policy_path: Path,
    episodes: int,
    candidates: int = 8,
    critic: Path | None = None,
) -> dict[str, Any]:
    """Simulated scores of the policy alone, the policy at a matched act time, and the DWM planner (also
    with ``critic``'s state value, a TD3+BC agent, as the terminal value at the imagined horizon)."""
    from diffctl.agents import load
    from diffctl.envs.evaluate import evaluate
    from diffctl.world_models.planning import ImaginationAgent

    task = dataset.split("-")[0]
    model = load(root / f"{dataset}-dwm" / "checkpoint")
    rows = []

    def score(name: str, agent: Any) -> dict[str, Any]:
        result = evaluate(agent, task, episodes=episodes, seed=0, n_workers=0)
        keys = ("mean_return", "normalized_score", "act_latency_ms_mean", "act_latency_ms_p99")
        row = {"agent": name, **{k: float(result[k]) for k in keys}}
        print(json.dumps(row), flush=True)
        return row

    policy = load(policy_path)
    rows.append(score(f"policy ({policy.sampler.solver}, {policy.sampler.steps} steps)", policy))
    planner = ImaginationAgent(load(policy_path), model, candidates=candidates, seed=0)
    rows.append(score(f"ImaginationAgent: best of {candidates} by DWM return", planner))
    ratio = rows[1]["act_latency_ms_mean"] / max(rows[0]["act_latency_ms_mean"], 1e-9)
    steps = max(1, round(policy.sampler.steps * ratio))
    matched = load(policy_path, steps=steps)
    rows.append(score(f"policy ({matched.sampler.solver}, {steps} steps: the planner's act time)", matched))
    if critic is not None:
        value = load(critic).state_value
        planner = ImaginationAgent(load(policy_path), model, candidates=candidates, value_fn=value, seed=0)
        rows.append(score(f"ImaginationAgent: best of {candidates} by DWM return + critic value", planner))
    return {"dataset": dataset, "policy": str(policy_path), "critic": str(critic or ""), "episodes": episodes,
            "rows": rows}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# World models: open-loop prediction error and imagination speed",
        "",
        f"`PYTHONPATH=. taskset -c 0 python benchmarks/world_models.py` on {cfg['platform']} "
        f"({cfg['cpus']} CPUs, one torch thread), torch {cfg['torch']}. Each model: `diffctl train "
        f"task=<dataset> world_model=<model> experiment=world_model` ({cfg['steps'] or 'recipe'} steps; DWM "
        "samples with DPM-Solver++(2M), 5 steps, 8 states per sample). Errors on "
        f"{cfg['windows']} windows from the held-out 10% of episodes, 32 steps under the logged actions; "
        "state RMSE in units of each dimension's standard deviation, reward RMSE in units of the reward's.",
        "",
        "| dataset | model | state RMSE h=1 | h=8 | h=16 | h=32 | reward RMSE h=1 | h=8 | h=16 | h=32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in report["datasets"]:
        for name, m in d["models"].items():
            e = m["errors"]
            states = " | ".join(f"{e[str(h)]['state_rmse']:.3f}" for h in HORIZONS)
            rewards = " | ".join(f"{e[str(h)]['reward_rmse']:.3f}" for h in HORIZONS)
            lines.append(f"| {d['dataset']} | {name} | {states} | {rewards} |")
    lines += [
        "",
        "## Imagined steps per second (32-step rollouts, one thread)",
        "",
        "| dataset | model | parameters | batch 1 | batch 256 | training s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for d in report["datasets"]:
        for name in MODELS:
            m = d["models"][name]
            lines.append(
                f"| {d['dataset']} | {name} | {m['params']:,} | {m['steps_per_s']['1']:,.0f} "
                f"| {m['steps_per_s']['256']:,.0f} | {m['train_seconds']:.0f} |"
            )
    for ope in report.get("ope", []):
        names = list(dict.fromkeys(v["model"] for v in ope["summary"].values()))
        lines += [
            "",
            f"## Offline policy evaluation: SAC checkpoints on {ope['dataset']} "
            f"({ope['starts']} seeded starts each)",
            "",
            *([f"`{ope['command']}`", ""] if ope.get("command") else []),
            "| SAC step | steps | true return | " + " | ".join(f"{n} imagined" for n in names) + " |",
            "|---:|---:|---:|" + "---:|" * len(names),
        ]
        for r in ope["rows"]:
            for h in OPE_HORIZONS:
                est = " | ".join(f"{r[f'{n}_{h}']:.1f}" for n in names)
                lines.append(f"| {r['step']} | {h} | {r[f'true_{h}']:.1f} | {est} |")
        lines += [
            "",
            "| model | steps | Spearman rank correlation | mean absolute error |",
            "|---|---:|---:|---:|",
        ]
        for v in ope["summary"].values():
            lines.append(f"| {v['model']} | {v['horizon']} | {v['spearman']:.2f} | {v['mae']:.1f} |")
    for plan in report.get("plan", []):
        lines += [
            "",
            f"## Planning through the model on {plan['dataset']} ({plan['episodes']} episodes, "
            f"policy `{plan['policy']}`"
            + (f", critic `{plan['critic']}`" if plan.get("critic") else "")
            + ")",
            "",
            *([f"`{plan['command']}`", ""] if plan.get("command") else []),
            "| agent | return | normalized score | act ms mean | act ms p99 |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in plan["rows"]:
            lines.append(
                f"| {r['agent']} | {r['mean_return']:.1f} | {r['normalized_score']:.1f} "
                f"| {r['act_latency_ms_mean']:.2f} | {r['act_latency_ms_p99']:.2f} |"
            )
    lines += ["", "## Targets", "", "| target | dataset | result | met |", "|---|---|---|---|"]
    for name, dataset, value, met in report["targets"]:
        lines.append(f"| {name} | {dataset} | {value} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def targets(report: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    out = []
    for ope in report.get("ope", []):
        for v in ope["summary"].values():
            rho, label = v["spearman"], f"OPE Spearman >= 0.8 ({v['model']}, {v['horizon']} steps)"
            out.append((label, ope["dataset"], f"{rho:.2f}", bool(rho >= 0.8)))
    for d in report["datasets"]:
        dwm, ens = d["models"]["dwm"], d["models"]["mlp_ensemble"]
        ratio = dwm["errors"]["32"]["state_rmse"] / ens["errors"]["32"]["state_rmse"]
        out.append(
            ("DWM 32-step state error <= 0.5x the ensemble's", d["dataset"], f"{ratio:.2f}x", ratio <= 0.5)
        )
        speedup = dwm["steps_per_s"]["256"] / ens["steps_per_s"]["256"]
        out.append(
            (
                "DWM imagined steps/s at batch 256 >= the ensemble's",
                d["dataset"],
                f"{speedup:.2f}x",
                speedup >= 1,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["maze2d-umaze"])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--windows", type=int, default=512, help="held-out windows scored per dataset")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where the dataset stores live")
    parser.add_argument("--runs", type=Path, default=None, help="where the trained models go (default: temp)")
    parser.add_argument("--ope-sac", type=Path, default=None, help="SAC run whose checkpoints OPE ranks")
    parser.add_argument("--ope-every", type=int, default=2, help="use every N-th SAC checkpoint")
    parser.add_argument("--ope-starts", type=int, default=10, help="seeded start states per policy")
    parser.add_argument("--plan", type=Path, default=None, help="diffusion policy checkpoint to plan with")
    parser.add_argument("--plan-episodes", type=int, default=10, help="simulated episodes per planning row")
    parser.add_argument("--plan-critic", type=Path, default=None, help="TD3+BC agent: terminal value")
    parser.add_argument(
        "--plan-only", action="store_true", help="redo the planning rows only (keeps the rest)"
    )
    parser.add_argument("--ope-only", action="store_true", help="redo the OPE rows only (keeps the rest)")
    parser.add_argument("--fast", action="store_true", help="smoke-test budget (not a result)")
    parser.add_argument("--out", default=None, help="results dir (default benchmarks/results; --fast: temp)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 50 if args.fast else args.steps
    out = Path(args.out or (tempfile.mkdtemp() if args.fast else "benchmarks/results"))
    root = args.runs or Path(tempfile.mkdtemp())
    command = " ".join(["PYTHONPATH=. python benchmarks/world_models.py", *sys.argv[1:]])
    if (args.ope_only and args.ope_sac is None) or (args.plan_only and args.plan is None):
        parser.error("--ope-only needs --ope-sac RUN and --plan-only needs --plan CHECKPOINT")
    if args.ope_only or args.plan_only:  # redo one section of the saved report, keep the rest
        report = json.loads((out / "world_models.json").read_text())
    else:
        report = {
            "config": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "steps": steps,
                "windows": 64 if args.fast else args.windows,
            },
            "datasets": [
                bench_dataset(d, root, steps, 64 if args.fast else args.windows, args.data_dir)
                for d in args.datasets
            ],
        }
    locomotion = [d for d in args.datasets if not d.startswith("maze")]
    if args.ope_sac is not None and not args.plan_only:
        report["ope"] = [ope_rows(d, root, args.ope_sac, args.ope_every, args.ope_starts) for d in locomotion]
        for entry in report["ope"]:
            entry["command"] = command
    if args.plan is not None and not args.ope_only:
        report["plan"] = [plan_rows(d, root, args.plan, args.plan_episodes, critic=args.plan_critic)
                          for d in locomotion]  # fmt: skip
        for entry in report["plan"]:
            entry["command"] = command
    report["targets"] = targets(report)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "world_models.json", json.dumps(report, indent=2))
    md = markdown(report)
    write_text(out / "world_models.md", md)
    print(md)


if __name__ == "__main__":
    main()
