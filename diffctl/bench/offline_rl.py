"""Offline RL benchmark: DiffusionQL, IDQL and EDP against d3rlpy's IQL and TD3+BC on the same files.

Every agent trains on the same locally generated dataset with the same step budget and batch, and every
policy, d3rlpy's included, is scored by the same ``dc.evaluate`` episodes (same seeds, one torch thread, in
this process). The headline figure is the FINAL checkpoint's D4RL normalized score (diffctl: the Trainer's
EMA weights at the last step), averaged over seeds and episodes. Learning curves come from evaluations every
``--curve-every`` steps with ``--curve-episodes`` episodes; their best point is reported in a separate,
labelled column and never replaces the final score.

d3rlpy pins an older gymnasium, so it runs in its own interpreter (``diffctl/bench/d3rlpy_peer.py``) on the
dataset exported as D4RL HDF5; its greedy policy comes back as TorchScript. Make that interpreter with

    python -m venv --system-site-packages ~/.cache/diffctl/venvs/d3rlpy
    ~/.cache/diffctl/venvs/d3rlpy/bin/pip install d3rlpy

Each run writes ``<out>/offline_rl/<dataset>-<agent>-seed<k>.json`` as soon as it finishes, so several
invocations (one per core) can share an output folder; every invocation then rebuilds the summary
(``offline_rl.json``, ``offline_rl.md`` and ``offline_rl_curves.png``) from all run files present.

    python benchmarks/offline_rl.py --datasets hopper-medium maze2d-umaze --agents idql edp d3rlpy_iql \\
        --steps 5000 --seeds 0 1 --episodes 10
    python benchmarks/offline_rl.py --summarize          # only rebuild the tables and the plot
    python benchmarks/offline_rl.py --rescore --keep-agents DIR   # score kept agents with new act variants
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffctl.atomic import atomic_path, write_json, write_text
from diffctl.datasets import EpisodeStore
from diffctl.datasets.d4rl import export_d4rl
from diffctl.policies.offline_rl import EDP, IDQL, DiffusionQL
from diffctl.train import Trainer
from diffctl.train.pipeline import compose_config, prepare

DIFFUSION = {"diffusion_ql": DiffusionQL, "idql": IDQL, "edp": EDP}
D3RLPY = {"d3rlpy_iql": "iql", "d3rlpy_td3bc": "td3bc"}
PAIRED_KEYS = ("critic_activation", "critic_inputs", "backup", "eta")  # EDP / DiffusionQL speed pairs
AGENTS = (*DIFFUSION, *D3RLPY)
MAZES = ("maze2d-umaze", "maze2d-medium", "maze2d-large")
PEER_VENV = Path.home() / ".cache" / "diffctl" / "venvs" / "d3rlpy" / "bin" / "python"
PEER_SCRIPT = Path(__file__).with_name("d3rlpy_peer.py")
DEFAULT_STEPS = 5000  # run files of other budgets carry a -steps<N> tag
PEER_LR = 3e-4  # d3rlpy's reproduction learning rate, and this benchmark's first setting for diffctl agents
# Act settings the final checkpoint is also scored with, beside its own (the method's stochastic sampling of N
# candidates ranked by Q): "deterministic" is one DDIM sample from zero start noise, no critic ranking,
# the counterpart of the greedy (mean) action d3rlpy's agents are scored with; "low-noise argmax" draws 16
# DDIM candidates from half-scale start noise (near the mode) and takes the one the critic scores highest.
VARIANTS = {
    "deterministic": {"solver": "ddim", "noise_scale": 0.0, "n_candidates": 1},
    "low-noise argmax": {"solver": "ddim", "noise_scale": 0.5, "n_candidates": 16, "selection": "argmax"},
}


def task_of(dataset: str) -> str:
    return dataset if dataset in MAZES else dataset.split("-")[0]


def missing_dataset_message(name: str, data_dir: Path) -> str:
    """Why ``name`` is skipped and the command that makes it."""
    path = data_dir / f"{name}.zarr"
    return (
        f"skip {name}: {path} does not exist; make it with `diffctl data generate {name} --out {path}` "
        "(a SAC run via stable-baselines3, extra rl, that takes hours; its time and cache are described in "
        "diffctl.datasets.generators.locomotion)"
    )


def open_store(name: str, data_dir: Path) -> EpisodeStore | None:
    """The dataset's store; mazes are generated when missing, locomotion is never generated here (its
    SAC run takes hours: see :func:`missing_dataset_message`)."""
    path = data_dir / f"{name}.zarr"
    if path.exists():
        return EpisodeStore.open(path)
    if name not in MAZES:
        return None
    from diffctl.datasets.generators import generate

    generate(name, path, size="small")
    return EpisodeStore.open(path)


def behaviour_score(store: EpisodeStore) -> float | None:
    """The normalized score of the policy that generated the data, from the dataset card."""
    card = store.attrs.get("card", store.attrs)
    behaviour = card.get("behaviour_policy") or {}
    score = behaviour.get("normalized_score", (behaviour.get("data_policy") or {}).get("normalized_score"))
    return None if score is None else float(score)


def find_peer_python(explicit: str | None) -> str | None:
    """An interpreter that imports d3rlpy: ``--d3rlpy-python``, this one, or the cache venv."""
    candidates = [explicit] if explicit else [sys.executable, str(PEER_VENV)]
    for python in candidates:
        if python and Path(python).exists():
            probe = subprocess.run([python, "-c", "import d3rlpy"], capture_output=True)
            if probe.returncode == 0:
                return python
    return None


def evaluate(agent: Any, dataset: str, episodes: int, seed: int) -> dict[str, Any]:
    import diffctl as dc

    return dc.evaluate(agent, task_of(dataset), episodes=episodes, seed=1000 + seed, n_workers=0)


def recipe(dataset: str) -> str:
    """The named ``diffctl train`` recipe (``experiment=...``) of a dataset."""
    return "offline_rl_maze" if dataset in MAZES else "offline_rl"


def train_overrides(
    name: str, dataset: str, store: EpisodeStore, args: argparse.Namespace, seed: int, run_dir: Path
) -> list[str]:
    """The ``diffctl train`` overrides of one run: the dataset's recipe with this invocation's budget and
    agent options (evaluation is the benchmark's own: curves every ``curve_every`` steps, the final score on
    ``episodes`` episodes)."""
    options = [f"policy.{k}={v}" for k, v in args.options.get(name, {}).items()]
    return [
        f"task={dataset}", f"policy={name}", f"experiment={recipe(dataset)}", f"seed={seed}",
        f"task.dataset.path={store.path}", f"training.steps={args.steps}", f"training.lr={args.lr}",
        f"training.batch_size={args.batch_size}", f"training.eval_every={args.curve_every}",
        f"training.progress={str(bool(args.progress)).lower()}", "training.device=cpu", f"run_dir={run_dir}",
        *options,
    ]  # fmt: skip


def train_diffusion(
    name: str, store: EpisodeStore, dataset: str, args: argparse.Namespace, seed: int, run_dir: Path
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Train; evaluate every ``curve_every`` steps and the final EMA weights with ``episodes``, with the
    agent's act settings and with each of ``VARIANTS`` (the final agent is saved, and kept in
    ``--keep-agents`` when given)."""
    prep = prepare(compose_config(train_overrides(name, dataset, store, args, seed, run_dir)))
    agent, ds = prep.agent, prep.dataset
    trainer = Trainer(agent, ds, prep.train_config, run_dir)
    curve: list[dict[str, Any]] = []
    timing = {"eval_s": 0.0}

    def eval_fn(policy: Any) -> dict[str, Any]:
        start = time.perf_counter()
        final = trainer.step >= args.steps
        result = evaluate(policy, dataset, args.episodes if final else args.curve_episodes, seed)
        curve.append({"step": trainer.step, "normalized_score": result["normalized_score"],
                      "episodes": result["episodes"]})  # fmt: skip
        if final:
            curve[-1]["result"] = result
            policy.save(run_dir / "final_agent")
            if args.keep_agents:
                options = args.options.get(name, {})
                policy.save(args.keep_agents / kept_name(dataset, name, args.lr, args.steps, options, seed))
        timing["eval_s"] += time.perf_counter() - start
        return result

    trainer.eval_fn = eval_fn
    start = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - start - timing["eval_s"]
    final = curve[-1].pop("result")
    final["variants"] = score_variants(run_dir / "final_agent", dataset, args.episodes, seed, list(VARIANTS))
    return final, curve, args.steps / train_s


def score_variants(
    agent_dir: Path, dataset: str, episodes: int, seed: int, variants: list[str]
) -> dict[str, dict[str, Any]]:
    """The saved agent's evaluation under each of the named ``VARIANTS`` act settings."""
    import diffctl as dc

    return {v: evaluate(dc.load(agent_dir, **VARIANTS[v]), dataset, episodes, seed) for v in variants}


def kept_name(dataset: str, agent: str, lr: float, steps: int, options: dict[str, Any], seed: int) -> str:
    """Directory name of a run's final agent under ``--keep-agents``."""
    return f"{dataset}-{agent}-lr{lr:g}-steps{steps}{options_tag(options)}-seed{seed}"


def rescore(runs_dir: Path, agents_dir: Path) -> list[Path]:
    """Score the final agents kept in ``agents_dir`` with the ``VARIANTS`` their run files lack (act settings
    added after the run), on the run's own evaluation episodes, without retraining; returns the files
    updated. Runs whose agent was not kept are left as they are."""
    updated = []
    for path in sorted(runs_dir.glob("*.json")):
        row = json.loads(path.read_text())
        missing = [v for v in VARIANTS if v not in row.get("variants", {})]
        if row["agent"] not in DIFFUSION or not missing:
            continue
        kept = agents_dir / kept_name(row["dataset"], row["agent"], row.get("lr", PEER_LR), row["steps"],
                                      row.get("options", {}), row["seed"])  # fmt: skip
        if not (kept / "config.json").is_file():
            continue
        scores = score_variants(kept, row["dataset"], row["episodes"], row["seed"], missing)
        row["variants"] = {**row.get("variants", {}), **scores}
        write_json(path, row)
        updated.append(path)
    return updated


class TorchScriptAgent:
    """A d3rlpy greedy policy exported as TorchScript, behind ``reset`` / ``act`` (pickles by path)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.module = torch.jit.load(self.path, map_location="cpu").eval()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (TorchScriptAgent, (self.path,))

    def reset(self, seed: int | None = None) -> None:
        pass

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(obs, np.float32))[None]
        return self.module(x)[0].numpy().astype(np.float32)


def train_d3rlpy(
    name: str, store: EpisodeStore, dataset: str, args: argparse.Namespace, seed: int, run_dir: Path
) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    hdf5 = run_dir / f"{dataset}.hdf5"
    export_d4rl(store, hdf5)
    cmd = [args.peer_python, str(PEER_SCRIPT), "--hdf5", str(hdf5), "--algo", D3RLPY[name],
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seed", str(seed),
           "--save-every", str(args.curve_every or 0), "--out", str(run_dir / "peer"),
           "--lr", str(args.peer_lr)]  # fmt: skip
    if dataset in MAZES:
        cmd.append("--goal")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    info = json.loads((run_dir / "peer" / "info.json").read_text())
    curve = []
    for step in info["saved_steps"]:
        n = args.episodes if step == args.steps else args.curve_episodes
        result = evaluate(TorchScriptAgent(run_dir / "peer" / f"policy-{step}.pt"), dataset, n, seed)
        curve.append({"step": step, "normalized_score": result["normalized_score"], "episodes": n})
    return {**result, "d3rlpy_version": info.get("d3rlpy")}, curve, float(info["train_steps_per_s"])


def run_one(name: str, dataset: str, store: EpisodeStore, args: argparse.Namespace, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="offline-rl-") as tmp:
        train = train_diffusion if name in DIFFUSION else train_d3rlpy
        result, curve, sps = train(name, store, dataset, args, seed, Path(tmp))
    return {
        "agent": name, "dataset": dataset, "seed": seed, "steps": args.steps, "batch_size": args.batch_size,
        "lr": args.lr if name in DIFFUSION else args.peer_lr, "options": args.options.get(name, {}),
        "train_steps_per_s": sps, "normalized_score": result["normalized_score"],
        "normalized_scores": result["normalized_scores"], "mean_return": result["mean_return"],
        "success_rate": result["success_rate"], "act_latency_ms_p50": result["act_latency_ms_p50"],
        "act_latency_ms_p99": result["act_latency_ms_p99"], "episodes": args.episodes, "curve": curve,
        "curve_episodes": args.curve_episodes, "machine": machine(),
        **({"d3rlpy_version": result["d3rlpy_version"]} if "d3rlpy_version" in result else {}),
        "behaviour_score": behaviour_score(store),
        "variants": {
            variant: {"act": VARIANTS[variant], "normalized_score": v["normalized_score"],
                   "normalized_scores": v["normalized_scores"], "mean_return": v["mean_return"],
                   "success_rate": v["success_rate"], "act_latency_ms_p50": v["act_latency_ms_p50"],
                   "act_latency_ms_p99": v["act_latency_ms_p99"]}
            for variant, v in result.get("variants", {}).items()
        },
    }  # fmt: skip


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}"


def parse_options(items: list[str]) -> dict[str, dict[str, float | str]]:
    """``AGENT.KEY=VALUE`` strings (``idql.awr_beta=0.5``, ``idql.critic_activation=mish``) ->
    ``{agent: {key: value}}``; whole numbers stay ints (``critic_depth=2``), other numbers are floats and
    words (letters, digits, ``_``) stay strings."""
    options: dict[str, dict[str, float | str]] = {}
    for item in items:
        head, sep, value = item.partition("=")
        agent, dot, key = head.partition(".")
        if not sep or not dot or agent not in DIFFUSION or not key:
            raise ValueError(
                f"--option {item!r}: expected AGENT.KEY=VALUE with AGENT one of {list(DIFFUSION)}"
            )
        try:
            number = float(value)
        except ValueError:
            if not (value.isidentifier() and value.isascii()):
                raise ValueError(
                    f"--option {item!r}: value {value!r} is neither a number nor a word"
                ) from None
            options.setdefault(agent, {})[key] = value
            continue
        whole = value.strip().lstrip("+-").isdigit()
        options.setdefault(agent, {})[key] = int(value) if whole else number
    return options


def _text(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"


def options_tag(options: dict[str, float | str]) -> str:
    """File-name tag of an agent's non-default options, e.g. ``-awr_beta3`` or ``-critic_activationmish``."""
    return "".join(f"-{k}{_text(v)}" for k, v in sorted(options.items()))


def label(row: dict[str, Any]) -> str:
    """Agent name with the learning rate (d3rlpy's only when it differs from its reproduction setting),
    its non-default options and the act variant, if any."""
    lr = row.get("lr", PEER_LR)
    settings = [] if row["agent"] in D3RLPY and lr == PEER_LR else [f"lr {lr:g}"]
    settings += [f"{k} {_text(v)}" for k, v in sorted(row.get("options", {}).items())]
    name = f"{row['agent']} ({', '.join(settings)})" if settings else row["agent"]
    return f"{name}, {row['variant']} act" if row.get("variant") else name


def with_variants(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run rows plus one row per act variant of a run (its final scores under ``VARIANTS``; no curve)."""
    out = []
    for r in rows:
        out.append(r)
        for name, v in r.get("variants", {}).items():
            out.append({**r, **{k: x for k, x in v.items() if k != "act"}, "variant": name, "curve": []})
    return out


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per dataset, step budget and agent (+ lr): final score over seeds x episodes, best curve point,
    speed, latency."""
    out = []
    for dataset, steps, agent in sorted({(r["dataset"], r["steps"], label(r)) for r in rows}):
        group = [r for r in rows if r["dataset"] == dataset and r["steps"] == steps and label(r) == agent]
        scores = np.concatenate([np.asarray(r["normalized_scores"], float) for r in group])
        best = [max(p["normalized_score"] for p in r["curve"]) for r in group if r.get("curve")]
        out.append({
            "dataset": dataset, "agent": agent, "method": group[0]["agent"],
            "seeds": sorted(r["seed"] for r in group),
            "steps": steps, "episodes_total": int(scores.size),
            "normalized_score_mean": float(scores.mean()),
            "normalized_score_sem": (
                float(scores.std(ddof=1) / np.sqrt(scores.size)) if scores.size > 1 else None
            ),
            "seed_means": [float(r["normalized_score"]) for r in group],
            "best_during_training_mean": float(np.mean(best)) if best else None,
            "success_rate": float(np.mean([r["success_rate"] for r in group])),
            "train_steps_per_s": float(np.mean([r["train_steps_per_s"] for r in group])),
            "act_latency_ms_p50": float(np.mean([r["act_latency_ms_p50"] for r in group])),
            "act_latency_ms_p99": float(np.mean([r["act_latency_ms_p99"] for r in group])),
            "behaviour_score": group[0].get("behaviour_score"), "variant": group[0].get("variant"),
            "lr": group[0].get("lr"), "options": group[0].get("options", {}),
        })  # fmt: skip
    return out


def settings(method: str, options: dict[str, float | str]) -> tuple[tuple[str, Any], ...]:
    """A diffctl agent's options with its own defaults for ``PAIRED_KEYS`` filled in, so runs of different
    agents compare like for like (EDP defaults to ReLU critics on raw states trained with IQL's expectile
    backup and ``eta=10``, DiffusionQL to Mish on normalized states, ``eta=1``, and always backs up through
    its target actor)."""
    defaults = DIFFUSION[method].config_class.defaults()
    full = {"backup": "policy"} | {k: defaults[k] for k in PAIRED_KEYS if k in defaults} | options
    return tuple(sorted(full.items()))


def edp_speedups(summary: list[dict[str, Any]]) -> dict[str, float]:
    """EDP training steps/s over DiffusionQL's, per dataset, steps, lr and critic (same data, steps, batch,
    critics, critic target and ``eta``: the two differ only in how the actor's Q term reaches the actor)."""
    runs = [s for s in summary if not s["variant"] and s["method"] in ("edp", "diffusion_ql")]
    speed = {(s["dataset"], s["steps"], s["lr"], settings(s["method"], s["options"]), s["method"]): s
             for s in runs}  # fmt: skip
    return {
        f"{d} {n} steps {s['agent'][4:]}": s["train_steps_per_s"]
        / speed[(d, n, lr, o, "diffusion_ql")]["train_steps_per_s"]
        for (d, n, lr, o, m), s in speed.items()
        if m == "edp" and (d, n, lr, o, "diffusion_ql") in speed
    }


def seed_difference(a: list[float], b: list[float]) -> tuple[float, float | None]:
    """Difference of the seed means of two runs and its standard error over seeds (Welch), or None where
    either side has a single seed: seeds, not episodes, are the independent repeats of a training run."""
    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return diff, None
    return diff, float(np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b)))


def iql_reference(summary: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """d3rlpy IQL's row per dataset and step budget, at its best learning rate where several were run."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for s in summary:
        key = (s["dataset"], s["steps"])
        if s["method"] == "d3rlpy_iql" and (
            key not in best or s["normalized_score_mean"] > best[key]["normalized_score_mean"]
        ):
            best[key] = s
    return best


def target_results(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's target per diffusion row: its final score at least d3rlpy IQL's on the same dataset and
    step budget (IQL's best learning rate where several were run), with the difference over seed means."""
    iql = iql_reference(summary)
    out = []
    for s in summary:
        ref = iql.get((s["dataset"], s["steps"]))
        if s["method"] in DIFFUSION and ref is not None:
            diff, se = seed_difference(s["seed_means"], ref["seed_means"])
            out.append({"dataset": s["dataset"], "steps": s["steps"], "agent": s["agent"],
                        "score": s["normalized_score_mean"], "iql": ref["normalized_score_mean"],
                        "diff": diff, "se": se,
                        "met": s["normalized_score_mean"] >= ref["normalized_score_mean"]})  # fmt: skip
    return out


def target_check(summary: list[dict[str, Any]]) -> list[str]:
    """Table rows of ``target_results``; the difference carries its standard error over seeds, so a tie
    within the noise reads as one."""
    lines = []
    for t in target_results(summary):
        delta = f"{t['diff']:+.1f}" + ("" if t["se"] is None else f" ± {t['se']:.1f}")
        lines.append(f"| {t['dataset']} | {t['steps']} | {t['agent']} | {t['score']:.1f} | {t['iql']:.1f} | "
                     f"{delta} | {'met' if t['met'] else 'MISSED'} |")  # fmt: skip
    return lines


def target_overview(summary: list[dict[str, Any]]) -> list[str]:
    """Per step budget and agent row (agent, options, act) run on every dataset that d3rlpy IQL was run on
    at that budget: on how many it meets the target, and which it misses."""
    iql_datasets: dict[int, set[str]] = {}
    for dataset, steps in iql_reference(summary):
        iql_datasets.setdefault(steps, set()).add(dataset)
    results = target_results(summary)
    lines = []
    for steps, agent in sorted({(t["steps"], t["agent"]) for t in results}):
        met = {t["dataset"]: t["met"] for t in results if t["steps"] == steps and t["agent"] == agent}
        if set(met) != iql_datasets[steps]:
            continue
        missed = sorted(d for d, ok in met.items() if not ok)
        lines.append(f"| {steps} | {agent} | {len(met) - len(missed)} of {len(met)} | "
                     f"{', '.join(missed) or '-'} |")  # fmt: skip
    return lines


def markdown(summary: list[dict[str, Any]], speedups: dict[str, float], meta: dict) -> str:
    versions = meta.get("d3rlpy_versions")
    peer = f"; d3rlpy {', '.join(versions)} in the runs that record it" if versions else ""
    lines = [
        "# Offline RL: final-checkpoint D4RL normalized scores",
        "",
        f"Commands: {'; '.join(f'`{c}`' for c in meta['commands'])} on {meta['machine']} (one torch thread "
        f"per run, two runs at a time on a shared machine){peer}.",
        "Score = the final checkpoint (diffctl: Trainer EMA weights at the last step; d3rlpy: last step), "
        "mean over seeds and evaluation episodes ± standard error over episodes, with the per-seed means "
        "beside it. 'Best during training' is the best point of the learning curve (fewer episodes per "
        "point), shown only for reference. 'data policy' is the score of the policy that generated the "
        "dataset (from its card).",
        "",
        "| dataset | data policy | agent | steps | seeds | final normalized score | per-seed | best during "
        "training | success | train steps/s | act p50 ms | act p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        sem = f" ± {s['normalized_score_sem']:.1f}" if s["normalized_score_sem"] is not None else ""
        best = "" if s["best_during_training_mean"] is None else f"{s['best_during_training_mean']:.1f}"
        per_seed = ", ".join(f"{v:.1f}" for v in s["seed_means"])
        lines.append(
            f"| {s['dataset']} | {_fmt(s['behaviour_score'])} | {s['agent']} | "
            f"{s['steps']} | {len(s['seeds'])} | "
            f"{s['normalized_score_mean']:.1f}{sem} | {per_seed} | {best} | {s['success_rate']:.2f} | "
            f"{s['train_steps_per_s']:.1f} | {s['act_latency_ms_p50']:.2f} | {s['act_latency_ms_p99']:.2f} |"
        )
    lines += ["", "EDP training speed-up over DiffusionQL (same data, steps, batch): "
              + (", ".join(f"{d}: {v:.2f}x" for d, v in speedups.items()) or "not measured")]  # fmt: skip
    target = target_check(summary)
    if target:
        header = "| dataset | steps | agent | score | d3rlpy IQL (best lr) | difference ± se | target |"
        lines += ["", "Target: each diffusion agent's final score >= d3rlpy IQL's on the same dataset. The "
                  "difference's standard error is over seed means (Welch; none with one seed on a side).",
                  "", header, "|---|---|---|---|---|---|---|", *target,
                  "", "Agents and acts run on every dataset d3rlpy IQL was run on at that budget:", "",
                  "| steps | agent | target met on | missed on |", "|---|---|---|---|",
                  *target_overview(summary)]  # fmt: skip
    lines += ["", "Learning curves: `offline_rl_curves.png`."]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """A grid of panels, one row per dataset and one column per step budget, one line per agent (mean over
    seeds of each evaluated step). Each agent keeps its colour in every panel; one legend below the grid."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    budgets = sorted({r["steps"] for r in rows})
    agents = sorted({label(r) for r in rows})
    palette = plt.get_cmap("tab20")
    colours = {agent: palette(i % palette.N) for i, agent in enumerate(agents)}
    legend_h = 0.16 * math.ceil((len(agents) + 1) / 3) + 0.2  # inches: agents and the data line, 3 a row
    height = 3.0 * len(datasets) + legend_h
    fig, axes = plt.subplots(len(datasets), len(budgets), figsize=(4.2 * len(budgets), height), squeeze=False)
    for (i, dataset), (j, budget) in itertools.product(enumerate(datasets), enumerate(budgets)):
        ax = axes[i][j]
        runs = [r for r in rows if r["dataset"] == dataset and r["steps"] == budget]
        if not runs:
            ax.set_visible(False)
            continue
        for agent in sorted({label(r) for r in runs}):
            points: dict[int, list[float]] = {}
            for r in runs:
                if label(r) == agent:
                    for p in r.get("curve", []):
                        points.setdefault(int(p["step"]), []).append(float(p["normalized_score"]))
            steps = sorted(points)
            ax.plot(steps, [np.mean(points[s]) for s in steps], marker="o", ms=3, label=agent,
                    color=colours[agent], ls="--" if agent.split(" ")[0] in D3RLPY else "-")  # fmt: skip
        data_score = next((r.get("behaviour_score") for r in runs), None)
        if data_score is not None:
            ax.axhline(data_score, color="grey", ls=":", lw=1, label="data policy")
        ax.set_title(f"{dataset}, {budget} steps", fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.set_ylabel("D4RL normalized score", fontsize=8)
        ax.grid(alpha=0.3)
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        handles, names = ax.get_legend_handles_labels()
        legend.update({name: h for name, h in zip(names, handles, strict=True) if name not in legend})
    names = sorted(legend, key=lambda name: (name == "data policy", name))
    fig.legend([legend[n] for n in names], names, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)


def write_summary(out: Path, command: str | None) -> str:
    runs_dir = out / "offline_rl"
    rows = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
    meta_path = out / "offline_rl.json"
    commands = json.loads(meta_path.read_text())["meta"].get("commands", []) if meta_path.exists() else []
    if command and command not in commands:
        commands.append(command)
    summary = summarize(with_variants(rows))
    speedups = edp_speedups(summary)
    peer_versions = sorted({r["d3rlpy_version"] for r in rows if r.get("d3rlpy_version")})
    meta = {"commands": commands, "machine": machine(), "d3rlpy_versions": peer_versions}
    runs = [{k: v for k, v in r.items() if k != "normalized_scores"} for r in rows]
    write_json(meta_path, {"meta": meta, "summary": summary, "edp_speedup": speedups, "runs": runs})
    text = markdown(summary, speedups, meta)
    write_text(out / "offline_rl.md", text)
    if rows:
        plot_curves(rows, out / "offline_rl_curves.png")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["maze2d-umaze"])
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate of the diffctl agents")
    parser.add_argument("--peer-lr", type=float, default=PEER_LR, help="learning rate of the d3rlpy agents")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--episodes", type=int, default=10, help="episodes for the final score, per seed")
    parser.add_argument("--curve-every", type=int, default=1000, help="0: no learning curve")
    parser.add_argument("--curve-episodes", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--d3rlpy-python", help=f"interpreter with d3rlpy (default: {PEER_VENV})")
    parser.add_argument("--skip-existing", action="store_true", help="keep run files already in --out")
    parser.add_argument("--summarize", action="store_true", help="only rebuild the summary from run files")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--keep-agents", type=Path, help="also keep each diffctl run's final agent here")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="score the agents kept in --keep-agents with the act variants their run files lack, then "
        "rebuild the summary (no training)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="AGENT.KEY=VALUE",
        help="constructor argument of a diffctl agent, e.g. idql.awr_beta=3 (repeatable)",
    )
    args = parser.parse_args()
    try:
        args.options = parse_options(args.option)
    except ValueError as err:
        parser.error(str(err))
    torch.set_num_threads(1)
    if args.curve_every and args.steps % args.curve_every:
        parser.error(f"--steps {args.steps} must be a multiple of --curve-every {args.curve_every}")
    command = "python benchmarks/offline_rl.py " + " ".join(sys.argv[1:])
    runs_dir = args.out / "offline_rl"
    runs_dir.mkdir(parents=True, exist_ok=True)
    if args.rescore:
        if args.keep_agents is None or not args.keep_agents.is_dir():
            parser.error(f"--rescore needs --keep-agents DIR with the kept agents, got {args.keep_agents}")
        for path in rescore(runs_dir, args.keep_agents):
            print(f"rescored {path}", flush=True)
    if args.summarize or args.rescore:
        print(write_summary(args.out, None))
        return
    args.peer_python = find_peer_python(args.d3rlpy_python)
    missing, wrote = [], False
    for dataset in args.datasets:
        store = open_store(dataset, args.data_dir)
        if store is None:
            print(missing_dataset_message(dataset, args.data_dir), file=sys.stderr)
            missing.append(dataset)
            continue
        for name in args.agents:
            if name in D3RLPY and args.peer_python is None:
                print(f"skip {dataset} / {name}: no interpreter imports d3rlpy (see --help)", file=sys.stderr)
                continue
            for seed in args.seeds:
                lr = args.lr if name in DIFFUSION else args.peer_lr
                tag = f"-lr{lr:g}" if lr != PEER_LR else ""
                tag += f"-steps{args.steps}" if args.steps != DEFAULT_STEPS else ""
                tag += options_tag(args.options.get(name, {}))
                path = runs_dir / f"{dataset}-{name}{tag}-seed{seed}.json"
                if args.skip_existing and path.exists():
                    continue
                row = run_one(name, dataset, store, args, seed)
                row["command"] = command
                write_json(path, row)
                wrote = True
                print(json.dumps({k: v for k, v in row.items() if k not in ("normalized_scores", "curve")}),
                      flush=True)  # fmt: skip
    print(write_summary(args.out, command if wrote else None))
    if missing:
        sys.exit(f"no runs for {', '.join(missing)}: the dataset is missing (see above)")


if __name__ == "__main__":
    main()
