"""Improving a trained policy at inference: steering by a verifier, against the plain policy.

The base policy is the FetchPush state recipe (`diffctl train experiment=fetch_push_state`, success below
0.8), the verifier a one-step MLP-ensemble world model of the same data (`diffctl train task=fetch-push
world_model=mlp_ensemble experiment=world_model`) scoring each candidate chunk by the imagined goal-distance
progress of the block (`--verifier-reward progress`). Both are trained into ``--work`` unless there.

Each setting is rolled out in the simulator, 50 episodes per seed, in this process with one thread, so the act
latencies are comparable: the plain policy under its few-step sampler, DDPM-10 and DDPM-100; best-of-N and
FK particle steering at N = 1, 4, 16, 64. Every row reports the network evaluations (NFE) and verifier calls
per decision and the act latency (mean and p99, the replanning tick), and is reproduced by the `diffctl eval`
command shown.

    PYTHONPATH=. python benchmarks/improve.py
    PYTHONPATH=. python benchmarks/improve.py --quick        # smoke test (tiny budgets, temp dir)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffctl.atomic import write_text

POLICY_RECIPE = "fetch_push_state"
VERIFIER_RUN = "fetch-push-ens"
PLAIN = {
    "dpmpp_2m 10": {"solver": "dpmpp_2m", "steps": 10},
    "ddpm 10": {"solver": "ddpm", "steps": 10},
    "ddpm 100": {"solver": "ddpm", "steps": 100},
}
STEERED = "ddpm 10"
"""The sampler under every steered row: FK particles take ancestral (DDPM) steps on the policy's grid, so
best-of-N draws its candidates the same way and the plain ``ddpm 10`` row is the like-for-like base."""


def train(run_dir: Path, args: list[str]) -> Path:
    """``diffctl train <args>`` into ``run_dir`` unless its checkpoint exists; the checkpoint."""
    from diffctl.train.pipeline import compose_config, run

    ckpt = run_dir / "checkpoint"
    if not (ckpt / "config.json").exists():
        run(compose_config([*args, f"run_dir={run_dir}", "eval.episodes=0", "training.progress=false"]))
    return ckpt


def settings(ns: list[int], methods: list[str]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, sampler overrides, steering settings or {}) of every row."""
    rows = [(f"plain, {name}", sampler, {}) for name, sampler in PLAIN.items()]
    for method in methods:
        rows += [(f"{method}, N={n}", PLAIN[STEERED], {"method": method, "n": n}) for n in ns]
    return rows


def command(policy: Path, verifier: Path, sampler: dict[str, Any], steer: dict[str, Any], lam: float) -> str:
    cmd = f"diffctl eval {policy} --solver {sampler['solver']} --steps {sampler['steps']}"
    if steer:
        cmd += f" --steer {steer['method']} --verifier {verifier} --verifier-reward progress"
        cmd += f" --steer-set n={steer['n']}"
        if steer["method"] == "fk":
            cmd += f" --steer-set lam={lam}"
    return cmd


def evaluate_row(
    policy_ckpt: Path,
    verifier_ckpt: Path,
    label: str,
    sampler: dict[str, Any],
    steer: dict[str, Any],
    lam: float,
    episodes: int,
    seeds: list[int],
) -> dict[str, Any]:
    import diffctl as dc
    from diffctl.improve.build import steered_agent

    agent = dc.load(policy_ckpt, **sampler)
    if steer:
        extra = {"lam": lam} if steer["method"] == "fk" else {}
        agent = steered_agent(agent, verifier_ckpt, reward="progress", **steer, **extra)
    per_seed, lat_mean, lat_p99 = {}, [], []
    for seed in seeds:
        res = dc.evaluate(agent, agent.task, episodes=episodes, seed=seed, n_workers=0)
        per_seed[str(seed)] = res["success_rate"]
        lat_mean.append(res["act_latency_ms_mean"])
        lat_p99.append(res["act_latency_ms_p99"])
        print(label, seed, res["success_rate"], flush=True)
    rates = list(per_seed.values())
    cost = getattr(agent, "cost", None)
    nfe = (
        cost["nfe"] / cost["decisions"]
        if cost
        else float(sampler["steps"] * (2 if sampler["solver"] == "heun" else 1))
    )
    return {
        "setting": label, "method": steer.get("method", "plain"), "n": steer.get("n", 1),
        "solver": sampler["solver"], "steps": sampler["steps"],
        "success_rate": round(float(np.mean(rates)), 3),
        "success_std_over_seeds": round(float(np.std(rates)), 3) if len(rates) > 1 else None,
        "success_per_seed": per_seed, "episodes_per_seed": episodes,
        "nfe_per_decision": round(nfe, 1),
        "verifier_calls_per_decision": round(cost["verifier_calls"] / cost["decisions"], 1) if cost else 0,
        "act_ms_mean": round(float(np.mean(lat_mean)), 2), "act_ms_p99": round(float(np.mean(lat_p99)), 2),
        "simulator_steps": 0,
        "command": command(policy_ckpt, verifier_ckpt, sampler, steer, lam),
    }  # fmt: skip


class SimulatorVerifier:
    """Diagnostic upper bound, not a deployable verifier: each candidate's actions replayed in a copy of the
    live simulator's state (MuJoCo qpos, qvel, mocap, goal), scored by the summed block-to-goal progress."""

    differentiable = False
    task = "fetch-push"

    def __init__(self, steps: int) -> None:
        from diffctl.envs.registry import make_env

        self.shadow = make_env(self.task)
        self.shadow.reset(seed=0)
        self.live: Any = None
        self.steps = steps

    def copy_live_state(self) -> None:
        a, b = self.live.unwrapped, self.shadow.unwrapped
        for key in ("qpos", "qvel", "act", "mocap_pos", "mocap_quat", "ctrl"):
            getattr(b.data, key)[:] = getattr(a.data, key)
        b.data.time, b.goal = a.data.time, a.goal.copy()
        b._mujoco.mj_forward(b.model, b.data)

    def __call__(self, obs: Any, actions: torch.Tensor) -> torch.Tensor:
        scores = []
        for chunk in actions[:, : self.steps].numpy():
            self.copy_live_state()
            total = 0.0
            for action in chunk:
                o, *_ = self.shadow.unwrapped.step(np.clip(action, -1.0, 1.0))
                total -= float(np.linalg.norm(o["achieved_goal"] - o["desired_goal"]))
            scores.append(total)
        return torch.tensor(scores)


def simulator_row(policy_ckpt: Path, n: int, episodes: int, seeds: list[int]) -> dict[str, Any]:
    """Best-of-N with ``SimulatorVerifier`` over the same seeded episodes as ``dc.evaluate``."""
    import diffctl as dc
    from diffctl.envs.evaluate import run_episode
    from diffctl.envs.registry import get_task, make_env
    from diffctl.improve import SteeredPolicy

    spec, env = get_task("fetch-push"), make_env("fetch-push")
    verifier = SimulatorVerifier(steps=15)
    verifier.live = env
    agent = SteeredPolicy(dc.load(policy_ckpt, **PLAIN[STEERED]), verifier, method="best_of_n", n=n)
    per_seed, latencies = {}, []
    for seed in seeds:
        runs = [run_episode(agent, env, spec, seed, i) for i in range(episodes)]
        per_seed[str(seed)] = float(np.mean([r["success"] for r in runs]))
        latencies += [lat for r in runs for lat in r["latencies"]]
        print("simulator verifier", n, seed, per_seed[str(seed)], flush=True)
    rates = list(per_seed.values())
    ms = np.asarray(latencies) * 1e3
    return {
        "setting": f"best_of_n, simulator verifier (diagnostic), N={n}", "method": "best_of_n_simulator",
        "n": n,
        "solver": "ddpm", "steps": 10, "success_rate": round(float(np.mean(rates)), 3),
        "success_std_over_seeds": round(float(np.std(rates)), 3), "success_per_seed": per_seed,
        "episodes_per_seed": episodes,
        "nfe_per_decision": round(agent.cost["nfe"] / agent.cost["decisions"], 1),
        "verifier_calls_per_decision": float(n), "act_ms_mean": round(float(ms.mean()), 2),
        "act_ms_p99": round(float(np.percentile(ms, 99)), 2), "simulator_steps": 0,
        "command": f"python benchmarks/improve.py --no-steer --sim-verifier {n} (needs the live simulator)",
    }  # fmt: skip


RECIPES = {"anchored": "fetch_push_anchored", "moe": "fetch_push_moe"}
"""Policy recipes compared with the plain rows (trained with fetch_push_state's budget)."""


def recipe_row(work: Path, name: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """A policy recipe (trained through the pipeline unless in ``work``) with its own sampler, 3 seeds."""
    import diffctl as dc

    recipe = RECIPES[name]
    ckpt = train(work / recipe, [f"experiment={recipe}", *extra])
    agent = dc.load(ckpt)
    per_seed, lat_mean, lat_p99 = {}, [], []
    for seed in args.seeds:
        res = dc.evaluate(agent, "fetch-push", episodes=args.episodes, seed=seed, n_workers=0)
        per_seed[str(seed)] = res["success_rate"]
        lat_mean.append(res["act_latency_ms_mean"])
        lat_p99.append(res["act_latency_ms_p99"])
        print(name, seed, res["success_rate"], flush=True)
    rates = list(per_seed.values())
    sampler = agent.sampler
    return {
        "setting": f"{name} (`{recipe}`), {sampler.solver} {sampler.steps}", "method": name, "n": 1,
        "solver": sampler.solver, "steps": sampler.steps,
        "success_rate": round(float(np.mean(rates)), 3),
        "success_std_over_seeds": round(float(np.std(rates)), 3),
        "success_per_seed": per_seed, "episodes_per_seed": args.episodes,
        "nfe_per_decision": float(sampler.steps), "verifier_calls_per_decision": 0,
        "act_ms_mean": round(float(np.mean(lat_mean)), 2), "act_ms_p99": round(float(np.mean(lat_p99)), 2),
        "simulator_steps": 0, "command": f"diffctl train experiment={recipe}",
    }  # fmt: skip


class SB3Agent:
    """A stable-baselines3 model behind the ``act`` interface (deterministic actions)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, obs: Any) -> np.ndarray:
        return self.model.predict(np.asarray(obs, np.float32), deterministic=True)[0]


def ppo_from_scratch(task: str, env_steps: int, every: int, episodes: int, seed: int) -> list[dict[str, Any]]:
    """stable-baselines3 PPO (its defaults, 16 environments) on the same budget; success every ``every``
    steps with the same evaluation as the fine-tuned policy."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    import diffctl as dc
    from diffctl.envs.registry import make_env

    env = make_vec_env(lambda: make_env(task), n_envs=16, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=256, seed=seed, device="cpu", verbose=0)
    curve, done = [], 0
    while True:
        res = dc.evaluate(SB3Agent(model), task, episodes=episodes, seed=0, n_workers=0)
        curve.append({"step": done, "success_rate": res["success_rate"]})
        print("ppo from scratch", done, res["success_rate"], flush=True)
        if done >= env_steps:
            return curve
        model.learn(every, reset_num_timesteps=False)
        done = int(model.num_timesteps)


def base_of(policy: Path, run_dir: Path) -> Any:
    """The policy a fine-tuning run started from, as it acted then: the base policy with its own sampler
    (residual PPO starts at it exactly) or with the DDPM chain that DPPO fine-tunes."""
    from omegaconf import OmegaConf

    import diffctl as dc

    section = OmegaConf.load(run_dir / "config.yaml").finetune
    if section.name == "dppo":
        return dc.load(policy, solver="ddpm", steps=int(section.denoising_steps))
    return dc.load(policy)


def seeded_success(agent: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Success over ``args.seeds`` x ``args.episodes`` of an agent (or a checkpoint path)."""
    import diffctl as dc

    if not hasattr(agent, "act"):
        agent = dc.load(agent)
    per_seed = {
        str(seed): dc.evaluate(agent, "fetch-push", episodes=args.episodes, seed=seed, n_workers=0)[
            "success_rate"
        ]
        for seed in args.seeds
    }
    return {"success_rate": round(float(np.mean(list(per_seed.values()))), 3), "per_seed": per_seed}


FINETUNE = {"residual PPO": "resip_fetch_push", "DPPO": "dppo_fetch_push"}
"""Fine-tuning recipes of the base policy (each is ``diffctl train experiment=<recipe>``)."""


def finetune_section(work: Path, policy: Path, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Each fine-tuning recipe on the base policy through the pipeline (its logged evaluations give the
    curve), beside PPO from scratch on the largest simulator budget."""
    from diffctl.train.metrics import read_metrics

    methods, budget = {}, 0
    for label in args.finetune:
        recipe = FINETUNE[label]
        run_dir = work / recipe
        overrides = [f"experiment={recipe}", f"finetune.base={policy}", *extra]
        train(run_dir, overrides)
        curve = [{"step": r["step"], "success_rate": r["eval/success_rate"]}
                 for r in read_metrics(run_dir) if "eval/success_rate" in r]  # fmt: skip
        summary = json.loads((run_dir / "summary.json").read_text())
        budget = max(budget, int(summary["env_steps"]))
        before = seeded_success(base_of(policy, run_dir), args)
        after = seeded_success(run_dir / "checkpoint", args)
        if curve and curve[0]["step"] > 0:
            # a run that logged no evaluation before training: its base under the same evaluation (seed 0)
            curve.insert(0, {"step": 0, "success_rate": before["per_seed"][str(args.seeds[0])]})
        methods[label] = {
            "command": "diffctl train " + " ".join(overrides), "run_dir": str(run_dir), "curve": curve,
            "minutes": summary.get("minutes"), "env_steps": summary["env_steps"],
            "before": before, "after": after,
        }  # fmt: skip
    scratch = []
    if not args.no_scratch and methods:
        every = max(budget // 25, 1)
        scratch = ppo_from_scratch("fetch-push", budget, every, 2 if args.quick else 50, 0)
    return {"methods": methods, "scratch_curve": scratch}


def plot_curves(section: dict[str, Any], path: Path) -> None:
    """Success against simulator steps (skipped with a warning when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        print(f"warning: {path} skipped ({err})")
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    curves = {f"{k} on the diffusion policy": v["curve"] for k, v in section["methods"].items()}
    curves["PPO from scratch"] = section.get("scratch_curve") or []
    for label, curve in curves.items():
        if curve:
            ax.plot([p["step"] for p in curve], [p["success_rate"] for p in curve], "o-", label=label, ms=3)
    ax.set_xlabel("simulator steps")
    ax.set_ylabel("success rate (50 episodes)")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render_finetune(section: dict[str, Any]) -> list[str]:
    lines = [
        "## Fine-tuning in simulation",
        "",
        "Success of the fine-tuned policy over 50 episodes (seed 0; the residual's mean action, DPPO's "
        "policy with its DDPM chain) against simulator steps, beside stable-baselines3 PPO from scratch "
        "(its defaults, 16 environments). The first point of each curve is the policy before fine-tuning.",
        "",
        "![success against simulator steps](improve_finetune.png)",
        "",
        "| method | command | minutes (1 core) | simulator steps | curve: first / best / last | "
        "before (seeds) | after (seeds) |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = dict(section["methods"])
    if section.get("scratch_curve"):
        rows["PPO from scratch"] = {"command": "stable-baselines3 PPO in benchmarks/improve.py",
                                    "curve": section["scratch_curve"], "minutes": None,
                                    "env_steps": section["scratch_curve"][-1]["step"]}  # fmt: skip
    for label, m in rows.items():
        curve = m["curve"]
        rates = [p["success_rate"] for p in curve]
        seeded = [
            f"{m[k]['success_rate']:.2f} ({' / '.join(f'{v:.2f}' for v in m[k]['per_seed'].values())})"
            if m.get(k) else "" for k in ("before", "after")
        ]  # fmt: skip
        lines.append(
            f"| {label} | `{m['command']}` | {m['minutes'] if m['minutes'] is not None else ''} | "
            f"{m['env_steps']} | {rates[0]:.2f} / {max(rates):.2f} / {rates[-1]:.2f} | "
            f"{seeded[0]} | {seeded[1]} |"
        )
    lines += ["", "| simulator steps | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    grid = sorted({p["step"] for m in section["methods"].values() for p in m["curve"]})
    for step in grid:
        cells = []
        for m in rows.values():
            near = min(m["curve"], key=lambda p: abs(p["step"] - step))
            close = abs(near["step"] - step) <= max(step // 10, 2048)
            cells.append(f"{near['success_rate']:.2f}" if close else "")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines


def render(result: dict[str, Any]) -> list[str]:
    lines = ["# Improving a trained policy (FetchPush)", ""]
    if result["rows"]:
        lines += steering_lines(result)
    if result.get("finetune"):
        lines += ["", *render_finetune(result["finetune"])]
    lines += ["", *result["targets"]]
    return lines


def steering_lines(result: dict[str, Any]) -> list[str]:
    meta = result["meta"]
    lines = [
        "## Steering by a verifier, beside the plain, anchored and mixture-of-experts policies",
        "",
        f"`{meta['command']}` on {meta['machine']}. {meta['task']}: base policy `{meta['policy_command']}`, "
        f"verifier `{meta['verifier_command']}` scoring the imagined block-to-goal progress of each chunk. "
        f"Success over {meta['episodes']} episodes per seed (seeds {', '.join(map(str, meta['seeds']))}); "
        "NFE and verifier calls per decision (one decision per executed chunk of 8 actions); act latency "
        "averaged over seeds, p99 being the replanning tick. Steered rows sample with DDPM steps on the "
        "policy's 10-step grid, so `plain, ddpm 10` is their base. No simulator steps are used.",
        "",
        "| setting | success | per seed | NFE / decision | verifier calls / decision | act ms mean | "
        "act ms p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    if meta.get("later_commands"):
        later = ", ".join(f"`{c}`" for c in meta["later_commands"])
        lines[2] += f" Rows and sections added later by {later}."
    for r in result["rows"]:
        seeds = " / ".join(f"{v:.2f}" for v in r["success_per_seed"].values())
        lines.append(
            f"| {r['setting']} | {r['success_rate']:.2f} | {seeds} | {r['nfe_per_decision']:g} | "
            f"{r['verifier_calls_per_decision']:g} | {r['act_ms_mean']:.2f} | {r['act_ms_p99']:.1f} |"
        )
    lines += ["", "Commands (one per row):", ""]
    lines += [f"- {r['setting']}: `{r['command']}`" for r in result["rows"]]
    return lines


def targets(rows: list[dict[str, Any]], finetune: dict[str, Any] | None = None) -> list[str]:
    out = ["Targets:", ""]
    scratch = (finetune or {}).get("scratch_curve") or []
    for label, m in ((finetune or {}).get("methods") or {}).items():
        start, end = m["before"]["success_rate"], m["after"]["success_rate"]
        lift = (end - start) * 100
        best_scratch = max((p["success_rate"] for p in scratch), default=None)
        vs = "" if best_scratch is None else f"; PPO from scratch reaches at best {best_scratch:.2f}"
        met = lift >= 20 and (best_scratch is None or end > best_scratch)
        out.append(
            f"- {label} lifts success by >= 20 points within {m['env_steps']} simulator steps and beats PPO "
            f"from scratch: {start:.2f} -> {end:.2f} over the seeds ({lift:+.0f} points){vs}: "
            + ("met" if met else "missed")
        )
    if not rows:
        return out
    base = next(r for r in rows if r["setting"] == f"plain, {STEERED}")
    steered = [r for r in rows if r["method"] in ("best_of_n", "fk")]
    best = max(steered, key=lambda r: r["success_rate"], default=None)
    if best is not None and base["success_rate"] < 0.8:
        lift = (best["success_rate"] - base["success_rate"]) * 100
        out.append(
            f"- steering lifts success by >= 10 points where the base policy is below 0.8: best "
            f"{best['setting']} {best['success_rate']:.2f} vs {base['setting']} {base['success_rate']:.2f} "
            f"({lift:+.0f} points): " + ("met" if lift >= 10 else "missed")
        )
    anchored = next((r for r in rows if r["method"] == "anchored"), None)
    ddpm = next((r for r in rows if r["setting"] == "plain, ddpm 100"), None)
    if anchored and ddpm:
        ratio = anchored["success_rate"] / max(ddpm["success_rate"], 1e-9)
        out.append(
            f"- anchored 2-step diffusion within 5% of DDPM-100: {anchored['success_rate']:.2f} vs "
            f"{ddpm['success_rate']:.2f} ({ratio:.0%}): " + ("met" if ratio >= 0.95 else "missed")
        )
    moe = next((r for r in rows if r["method"] == "moe"), None)
    few = next((r for r in rows if r["setting"] == "plain, dpmpp_2m 10"), None)
    if moe and few:
        out.append(
            f"- mixture of experts (4 experts, 1 per noise level): {moe['success_rate']:.2f} vs the dense "
            f"MLP's {few['success_rate']:.2f} under the same sampler; act mean {moe['act_ms_mean']:.2f} vs "
            f"{few['act_ms_mean']:.2f} ms (no target)"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/improve", help="where the policy and verifier runs live")
    parser.add_argument("--policy", default=None, help="base policy checkpoint (default: train the recipe)")
    parser.add_argument("--ns", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--methods", nargs="+", default=["best_of_n", "fk"], choices=["best_of_n", "fk"])
    parser.add_argument("--lam", type=float, default=50.0, help="fk temperature (1 / metres of progress)")
    parser.add_argument("--episodes", type=int, default=50, help="per seed")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="smoke run into a temp dir (not a result)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--render-only", action="store_true", help="rewrite improve.md from improve.json")
    parser.add_argument("--no-steer", action="store_true", help="skip the steering rows (keep saved ones)")
    parser.add_argument("--dwm-verifier", action="store_true",
                        help="steering rows (--methods, --ns) verified by a DWM")  # fmt: skip
    parser.add_argument("--recipes", nargs="*", default=[], choices=list(RECIPES),
                        help="policy recipes (anchored, moe) beside the plain rows")  # fmt: skip
    parser.add_argument("--sim-verifier", nargs="*", type=int, default=[],
                        help="best-of-N rows verified in a copy of the simulator (diagnostic)")  # fmt: skip
    parser.add_argument("--finetune", nargs="*", default=[], choices=list(FINETUNE),
                        help="fine-tuning recipes to run (or reuse) beside PPO from scratch")  # fmt: skip
    parser.add_argument(
        "--no-scratch", action="store_true", help="skip PPO from scratch (keep a saved curve)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    out, work = Path(args.out), Path(args.work)
    policy_args = [f"experiment={POLICY_RECIPE}"]
    verifier_args = ["task=fetch-push", "world_model=mlp_ensemble", "experiment=world_model"]
    if args.quick:
        tmp = Path(tempfile.mkdtemp())
        out, work = tmp / "results", tmp / "runs"
        args.episodes, args.seeds, args.ns, args.policy = 2, [0], [1, 2], None
        tiny = [f"task.dataset.path={tmp}/data/fetch-push.zarr", "task.dataset.generate.episodes=3",
                "training.steps=3", "training.batch_size=4"]  # fmt: skip
        policy_args += tiny
        verifier_args += tiny
    else:
        tiny = []
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "improve.json", out / "improve.md"
    if args.render_only:
        result = json.loads(json_path.read_text())
        result["targets"] = targets(result["rows"], result.get("finetune"))
        write_text(md_path, "\n".join(render(result)) + "\n")
        return
    saved = json.loads(json_path.read_text()) if json_path.exists() and not args.quick else {}
    policy = Path(args.policy) if args.policy else train(work / POLICY_RECIPE, policy_args)
    rows = saved.get("rows", [])
    if not args.no_steer:
        verifier = train(work / VERIFIER_RUN, verifier_args)
        rows = [
            evaluate_row(policy, verifier, label, sampler, steer, args.lam, args.episodes, args.seeds)
            for label, sampler, steer in settings(args.ns, args.methods)
        ]
    if args.dwm_verifier:
        dwm_args = ["task=fetch-push", "world_model=dwm", "experiment=world_model", *tiny]
        dwm = train(work / "fetch-push-dwm", dwm_args)
        rows = [r for r in rows if "DWM verifier" not in r["setting"]]
        rows += [
            evaluate_row(policy, dwm, f"{method}, DWM verifier, N={n}", PLAIN[STEERED],
                         {"method": method, "n": n}, args.lam, args.episodes, args.seeds)
            for method in args.methods for n in args.ns
        ]  # fmt: skip
    for name in args.recipes:
        rows = [r for r in rows if r["method"] != name]
        rows.append(recipe_row(work, name, args, tiny))
    if args.sim_verifier:
        rows = [r for r in rows if r["method"] != "best_of_n_simulator"]
        rows += [simulator_row(policy, n, args.episodes, args.seeds) for n in args.sim_verifier]
    finetune = saved.get("finetune")
    if args.finetune:
        extra = ["finetune.env_steps=1600", "finetune.eval_every=1", "finetune.eval_episodes=2", *tiny]
        kept = (finetune or {}).get("scratch_curve") or []
        finetune = finetune_section(work, policy, args, extra if args.quick else [])
        if args.no_scratch and kept:  # keep the saved PPO-from-scratch curve
            finetune["scratch_curve"] = kept
        plot_curves(finetune, out / "improve_finetune.png")
    meta = {
        "command": "python benchmarks/improve.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.platform()} ({os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread)",
        "task": "fetch-push", "episodes": args.episodes, "seeds": args.seeds,
        "policy_command": f"diffctl train experiment={POLICY_RECIPE}",
        "verifier_command": "diffctl train " + " ".join(verifier_args[:3]),
    }  # fmt: skip
    if saved and args.no_steer:  # the steering rows' run stays the header; record this one as well
        command = meta["command"]
        meta = saved["meta"]
        meta["later_commands"] = list(dict.fromkeys([*meta.get("later_commands", []), command]))
    result = {"meta": meta, "rows": rows, "finetune": finetune, "targets": targets(rows, finetune)}
    write_text(json_path, json.dumps(result, indent=2) + "\n")
    md = render(result)
    write_text(md_path, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
