"""Benchmark planners on CPU: planning rate (Hz, batch 1, one torch thread) and, for trained checkpoints,
maze2d normalized scores with the slow recipe and the fast settings side by side.

Rates: ``plan()`` of diffctl's Diffuser (maze: no value model; locomotion-style: value guidance) and
DecisionDiffuser (goal CFG) at maze2d-umaze shapes (state 4, goal 2, action 2) and horizon 64, for the slow
recipe (DDPM, 64 steps), few-step solvers and warm starts (the shifted previous plan re-noised to
``warm_start`` and finished with the grid tail), next to diffusers' ``ValueGuidedRLPipeline`` (UNet1DModel +
ValueFunction + DDPMScheduler) at the same horizon and U-Net widths. Weights are random: cost does not depend
on them. Scores: each ``--checkpoint NAME=DIR`` is loaded with every setting and run through
``dc.evaluate`` on ``--task``.

With ``--train DIR`` the checkpoints are made here, reproducibly: expert data of ``--task`` (a maze) with
``goal_radius=0.1`` (as ``diffctl quickstart``: the expert settles at its goal), then Diffuser,
DecisionDiffuser and the coarse-to-fine Diffuser (``planner=diffuser_lite``) trained through
``diffctl.train.pipeline`` (the ``diffctl train`` path), ``TRAIN_BUDGET``. Diffuser and DecisionDiffuser keep
their configs' horizons (64, 32) on every maze; the coarse-to-fine planner spans 65 steps on maze2d-umaze and
257 (5 points x 4 levels) on the larger mazes, whose paths are longer. Results of other tasks than
maze2d-umaze go to ``planners_<task>.{json,md}``.

    python benchmarks/planners.py [--checkpoint diffuser=runs/x/checkpoint ...] [--episodes 20] [--quick]
    python benchmarks/planners.py --train runs/planners-bench --episodes 20
    python benchmarks/planners.py --train runs/planners-medium --task maze2d-medium --skip-rates --episodes 10

``--recipes [NAME ...]`` instead trains (or reuses, under ``--work``) the named maze recipes
(``diffctl train experiment=planner_lite_umaze`` ...) and scores their slow and fast settings over
``--seeds`` into ``planners_mazes.{json,md}``; ``--suite locomotion`` does the same for the value-guided
Diffuser recipes (``planner_diffuser_hopper`` / ``_walker``) into ``planners_locomotion.{json,md}``, with the
plans ranked by an offline-RL critic as well when ``--critic RECIPE=CKPT`` names one. ``--settings`` rescores
only the named settings (the report keeps the other rows), ``--all-seeds`` scores every setting on every seed:

    python benchmarks/planners.py --recipes [planner_lite_medium ...] [--workers 2]
    python benchmarks/planners.py --recipes --suite locomotion --work runs/planner-loco --episodes 10 \
        --critic planner_diffuser_hopper=runs/ve/hopper-medium-none-h5-s0-5000/checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffctl.atomic import write_text
from diffctl.planners import CoarseToFineDiffuser, DecisionDiffuser, Diffuser
from diffctl.planners.base import Planner, shift_trajectory

STATE, GOAL, ACT, H = 4, 2, 2, 64
UNET = {"down_dims": [32, 64, 128], "kernel_size": 5, "n_groups": 8, "embed_dim": 64}
C2F_MLP = {"hidden": 256, "depth": 3, "embed_dim": 64}
# name -> (sampler overrides, planner overrides); "warm" settings also report the warm-started plan rate
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "slow: ddpm 64": ({"solver": "ddpm", "steps": 64, "warm_start": 0.0}, {"replan_every": 0}),
    "dpmpp_2m 10": ({"solver": "dpmpp_2m", "steps": 10, "warm_start": 0.0}, {"replan_every": 0}),
    "fast: dpmpp_2m 3": ({"solver": "dpmpp_2m", "steps": 3, "warm_start": 0.0}, {"replan_every": 0}),
    "fast: dpmpp_2m 3 + warm 0.5, replan 8": (
        {"solver": "dpmpp_2m", "steps": 3, "warm_start": 0.5},
        {"replan_every": 8},
    ),
}


# Locomotion (no goal): plans are ranked and steered by the value model. Diffuser's recipe replans often,
# and the slow DDPM-64 recipe at that rate costs minutes per episode on CPU, so these rows compare value
# guidance on and off at a fast setting, replanning every 4 steps or every step (Diffuser's locomotion
# recipe); "value" rows are skipped for planners without a value model.
def _fast_locomotion(replan_every: int, n_plans: int, value_scale: float) -> tuple[dict, dict]:
    fast = {"solver": "dpmpp_2m", "steps": 3, "warm_start": 0.0}
    return fast, {"replan_every": replan_every, "n_plans": n_plans, "value_scale": value_scale}


LOCOMOTION_SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "dpmpp_2m 3, replan 4, 1 plan, no value guidance": _fast_locomotion(4, 1, 0.0),
    "value: dpmpp_2m 3, replan 4, 8 plans ranked, guidance 0.1": _fast_locomotion(4, 8, 0.1),
    "dpmpp_2m 3, replan every step, 1 plan, no value guidance": _fast_locomotion(1, 1, 0.0),
    "value: dpmpp_2m 3, replan every step, 8 plans ranked, guidance 0.1": _fast_locomotion(1, 8, 0.1),
}


def task_settings(task: str) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    return SETTINGS if task.startswith("maze2d-") else LOCOMOTION_SETTINGS


@dataclass(frozen=True)
class TrainBudget:
    """Data and training sizes of ``--train``: Diffuser and DecisionDiffuser about 8 minutes each on one
    shared CPU core (a Diffuser step costs about 0.3 s at batch 64, a Decision Diffuser step, on states only,
    about 0.19 s); the coarse-to-fine planner's MLP levels are far cheaper per step."""

    data_episodes: int = 300
    goal_radius: float = 0.1
    steps: tuple[int, int, int] = (1500, 2500, 4000)  # diffuser, decision_diffuser, diffuser_lite
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    down_dims: tuple[int, ...] = (32, 64, 128)


TRAIN_BUDGET = TrainBudget()
QUICK_BUDGET = TrainBudget(data_episodes=8, steps=(20, 20, 20), batch_size=16, down_dims=(16, 32))
PLANNERS = ("diffuser", "decision_diffuser", "diffuser_lite")


def planner_overrides(name: str, task: str, budget: TrainBudget) -> list[str]:
    """Network-size overrides per planner: the U-Net widths of the budget, or the coarse-to-fine levels."""
    if name != "diffuser_lite":
        return [f"planner.backbone_kwargs.down_dims=[{','.join(map(str, budget.down_dims))}]"]
    if task in ("maze2d-medium", "maze2d-large"):
        return ["planner.points=5", "planner.levels=4", "task.horizon=257"]
    return ["planner.points=9", "planner.levels=2", "task.horizon=65"]


def train_checkpoints(
    work: Path,
    budget: TrainBudget,
    task: str,
    data_dir: Path = Path("data"),
    seed: int = 0,
    planners: tuple[str, ...] = PLANNERS,
) -> list[str]:
    """Train every planner on ``task``'s data: generated expert data for mazes, ``data_dir/<task>.zarr``
    for locomotion (``diffctl data generate``); returns ``NAME=DIR`` checkpoint specs."""
    from diffctl.datasets.generators import generate
    from diffctl.train.pipeline import compose_config, run

    if task.startswith("maze2d-"):
        data = work / "data" / f"{task}.zarr"
        if not data.exists():
            generate(task, data, episodes=budget.data_episodes, seed=seed, goal_radius=budget.goal_radius)
    else:
        data = data_dir / f"{task}.zarr"
        if not data.exists():
            raise FileNotFoundError(f"{data} does not exist: diffctl data generate {task} --out {data}")
    specs = []
    for name, steps in zip(PLANNERS, budget.steps, strict=True):
        if name not in planners:
            continue
        run_dir = work / name
        if not (run_dir / "checkpoint").exists():
            start = time.perf_counter()
            cfg = compose_config([
                f"task={task}", f"planner={name}", f"task.dataset.path={data}", f"run_dir={run_dir}",
                f"seed={seed}", f"training.steps={steps}", f"training.batch_size={budget.batch_size}",
                f"training.lr={budget.lr}", f"training.warmup_steps={budget.warmup_steps}",
                "training.checkpoint_every=0", "training.tensorboard=false", "training.progress=false",
                f"training.log_every={max(1, steps // 10)}", "eval.episodes=0",
                *planner_overrides(name, task, budget),
            ])  # fmt: skip
            run(cfg)
            print(f"trained {name} in {time.perf_counter() - start:.0f} s", flush=True)
        specs.append(f"{name}={run_dir / 'checkpoint'}")
    return specs


def nfe(planner: Planner, warm: bool) -> int:
    """Network evaluations of one plan (CFG doubles each; warm plans run only the grid below warm_start)."""
    sigmas = planner.sigmas()
    if warm and planner.sampler.warm_start > 0:
        sigmas = torch.cat(
            [sigmas.new_tensor([planner.sampler.warm_start]), sigmas[sigmas < planner.sampler.warm_start]]
        )
    steps = int((sigmas[:-1] > 0).sum())
    if planner.sampler.solver == "heun":
        steps = 2 * steps - 1
    cfg = isinstance(planner, DecisionDiffuser) and planner.sampler.guidance_scale != 1.0
    levels = planner.levels if isinstance(planner, CoarseToFineDiffuser) else 1
    return steps * (2 if cfg else 1) * levels


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def plan_rates(planner: Planner, obs: np.ndarray, repeats: int) -> dict[str, Any]:
    """Cold ``plan`` latency and, with ``warm_start``, the latency of a plan warm-started from the last."""
    planner.reset(seed=0)
    cold = median_ms(lambda: planner.plan(obs), repeats)
    row = {"nfe": nfe(planner, False), "plan_ms": round(cold, 2), "plan_hz": round(1e3 / cold, 1)}
    if planner.sampler.warm_start > 0 and supports_warm_start(planner):
        prev = planner.plan(obs)
        assert prev.trajectory is not None
        init = shift_trajectory(prev.trajectory[:, 0], 8)
        warm = median_ms(lambda: planner.plan(obs, init=init), repeats)
        row.update(
            warm_nfe=nfe(planner, True), warm_plan_ms=round(warm, 2), warm_plan_hz=round(1e3 / warm, 1)
        )
    return row


def supports_warm_start(planner: Planner) -> bool:
    return not isinstance(planner, CoarseToFineDiffuser)


def fitted(planner: Planner) -> Planner:
    rng = np.random.default_rng(0)
    obs = rng.uniform(-2, 2, (1000, STATE + GOAL))
    returns = rng.uniform(0, 100, 1000) if planner.uses_returns else None
    planner.fit_normalizers(obs, rng.uniform(-1, 1, (1000, ACT)), obs[:, STATE:], returns=returns)
    return planner


def random_planners() -> dict[str, Planner]:
    common = {"goal_dim": GOAL, "horizon": H, "backbone_kwargs": UNET}
    return {
        "Diffuser (maze, goal inpainting)": fitted(Diffuser(STATE + GOAL, ACT, **common)),
        "Diffuser (value guidance 0.1)": fitted(Diffuser(STATE + GOAL, ACT, value=True, **common)),
        "DecisionDiffuser (goal CFG 1.2)": fitted(
            DecisionDiffuser(STATE + GOAL, ACT, **common, sampler={"guidance_scale": 1.2})
        ),
        "CoarseToFineDiffuser (9 points x 2 levels, span 65)": fitted(
            CoarseToFineDiffuser(
                STATE + GOAL, ACT, goal_dim=GOAL, horizon=65, points=9, levels=2, backbone_kwargs=C2F_MLP
            )
        ),
    }


def rate_rows(
    repeats: int, settings: dict[str, tuple[dict[str, Any], dict[str, Any]]]
) -> list[dict[str, Any]]:
    rows = []
    obs = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 2.0], dtype=np.float32)
    for name, planner in random_planners().items():
        params = sum(p.numel() for p in planner.network.parameters())
        for setting, (sampler, _) in settings.items():
            if sampler["warm_start"] > 0 and not supports_warm_start(planner):
                continue
            planner.sampler = planner.sampler.replace(**sampler)
            reps = max(3, repeats // 8) if sampler["steps"] >= 32 else repeats
            row = {"impl": "diffctl", "model": name, "params": params, "setting": setting}
            rows.append({**row, **plan_rates(planner, obs, reps)})
            print(rows[-1], flush=True)
    return rows


def diffusers_rows(repeats: int, steps_list: list[int]) -> list[dict[str, Any]]:
    """diffusers' value-guided Diffuser at batch 1: the time of its denoising loop ``run_diffusion``.

    Its ``__call__`` fails at ``batch_size=1`` (``argsort(...).squeeze()`` drops the batch axis), so the
    loop the call wraps is timed directly; its per-step ``tqdm`` is silenced.
    """
    try:
        import gymnasium as gym
        from diffusers import DDPMScheduler, UNet1DModel
        from diffusers.experimental import ValueGuidedRLPipeline
        from diffusers.experimental.rl import value_guided_sampling
    except ImportError as err:
        print(f"diffusers side by side skipped: {err}")
        return []
    value_guided_sampling.tqdm.tqdm = lambda it, *a, **k: it  # type: ignore[assignment]
    dim = STATE + ACT
    common = {
        "sample_size": H, "in_channels": dim, "extra_in_channels": 0, "time_embedding_type": "positional",
        "flip_sin_to_cos": False, "use_timestep_embedding": True, "freq_shift": 1, "act_fn": "mish",
        "layers_per_block": 1,
    }  # fmt: skip
    torch.manual_seed(0)
    unet = UNet1DModel(
        **common, out_channels=dim, down_block_types=("DownResnetBlock1D",) * 3,
        up_block_types=("UpResnetBlock1D",) * 2, mid_block_type="MidResTemporalBlock1D",
        out_block_type="OutConv1DBlock", block_out_channels=(32, 64, 128), downsample_each_block=False,
    )  # fmt: skip
    # the value head needs the horizon pooled to length 1: four halving blocks for H = 64
    value = UNet1DModel(
        **common, out_channels=1, down_block_types=("DownResnetBlock1D",) * 4, up_block_types=(),
        mid_block_type="ValueFunctionMidBlock1D", out_block_type="ValueFunction",
        block_out_channels=(32, 64, 128, 256), downsample_each_block=True,
    )  # fmt: skip
    scheduler = DDPMScheduler(num_train_timesteps=64, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                              variance_type="fixed_small_log")  # fmt: skip
    rng = np.random.default_rng(0)

    class Env:
        observation_space = gym.spaces.Box(-1, 1, (STATE,))
        action_space = gym.spaces.Box(-1, 1, (ACT,))

        def get_dataset(self) -> dict[str, np.ndarray]:
            return {"observations": rng.normal(size=(1000, STATE)), "actions": rng.normal(size=(1000, ACT))}

    pipe = ValueGuidedRLPipeline(value_function=value, unet=unet, scheduler=scheduler, env=Env())
    cond = {0: torch.zeros(1, STATE)}
    params = {
        "unet": sum(p.numel() for p in unet.parameters()),
        "value": sum(p.numel() for p in value.parameters()),
    }
    rows = []
    for steps in steps_list:
        scheduler.set_timesteps(steps)
        for guide in (2, 0):
            x = pipe.reset_x0(torch.randn(1, H, dim), cond, ACT)
            reps = max(3, repeats // 8) if steps >= 32 else repeats
            ms = median_ms(lambda x=x, guide=guide: pipe.run_diffusion(x.clone(), cond, guide, 0.1), reps)
            rows.append({
                "impl": "diffusers", "model": f"ValueGuidedRLPipeline (n_guide_steps={guide})",
                "params": params["unet"] + (params["value"] if guide else 0), "setting": f"ddpm {steps}",
                "nfe": steps * (1 + guide), "plan_ms": round(ms, 2), "plan_hz": round(1e3 / ms, 1),
            })  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def score_rows(checkpoints: list[str], task: str, episodes: int, workers: int | None) -> list[dict[str, Any]]:
    import diffctl as dc
    from diffctl.train.pipeline import agent_class

    rows = []
    obs = None
    for spec in checkpoints:
        name, _, path = spec.partition("=")
        if not path:
            raise ValueError(f"--checkpoint expects NAME=DIR, got {spec!r}")
        cls = agent_class(json.loads((Path(path) / "config.json").read_text())["class"])
        for setting, (sampler, planner_keys) in task_settings(task).items():
            keys = {k: v for k, v in planner_keys.items() if k in cls.INFERENCE_KEYS}
            agent = dc.load(path, **sampler, **keys)
            if sampler["warm_start"] > 0 and not supports_warm_start(agent):
                continue
            if setting.startswith("value") and getattr(agent.network, "value", None) is None:
                continue
            if obs is None:
                from diffctl.envs.registry import make_env

                obs = make_env(task, seed=0).reset(seed=0)[0]
            rate = plan_rates(agent, obs, 10 if sampler["steps"] < 32 else 3)
            start = time.perf_counter()
            result = dc.evaluate(agent, task, episodes=episodes, seed=0, n_workers=workers)
            row = {
                "checkpoint": name, "horizon": agent.horizon, "setting": setting, **rate,
                "normalized_score": round(float(result["normalized_score"]), 1),
                "success_rate": round(float(result["success_rate"]), 3),
                "act_latency_ms_p50": round(float(result["act_latency_ms_p50"]), 2),
                "act_latency_ms_p99": round(float(result["act_latency_ms_p99"]), 2),
                "act_latency_ms_mean": round(float(result["act_latency_ms_mean"]), 2),
                "episodes": episodes, "eval_seconds": round(time.perf_counter() - start, 1),
            }  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    return rows


def train_note(budget: TrainBudget, seconds: float, task: str, planners: tuple[str, ...] = PLANNERS) -> str:
    lite = " ".join(planner_overrides("diffuser_lite", task, budget))
    data = (
        f"{budget.data_episodes} expert episodes of {task} with goal_radius {budget.goal_radius}"
        if task.startswith("maze2d-")
        else f"`data/{task}.zarr` (SAC-generated)"
    )
    names = {
        "diffuser": "Diffuser",
        "decision_diffuser": "DecisionDiffuser",
        "diffuser_lite": "coarse-to-fine Diffuser",
    }
    steps = ", ".join(f"{names[p]} {n}" for p, n in zip(PLANNERS, budget.steps, strict=True) if p in planners)
    return (
        f"trained by this script (--train) on {data}; {steps} training steps at batch {budget.batch_size}, "
        f"lr {budget.lr} (warmup {budget.warmup_steps}), U-Net down_dims {list(budget.down_dims)}, "
        f"coarse-to-fine `{lite}`, the configs' other defaults; {seconds:.0f} s in all for data and the "
        "planners on 1 thread (checkpoints already in the work dir are reused, not timed)."
    )


def table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


NOTES = """Notes: rates are the median ``plan()`` time at batch 1 with one torch thread on a machine shared
with other jobs, so they move by tens of percent between runs. ``nfe`` is per plan (classifier-free
guidance counts 2 per step; ``warm_nfe`` is a plan warm-started from the shifted previous one, what
every replan after the first costs in the warm setting). diffusers rows time
``ValueGuidedRLPipeline.run_diffusion`` (its ``__call__`` fails at batch 1:
``argsort(...).squeeze()`` drops the batch axis); with ``n_guide_steps=2`` each step runs the value
function forward + backward twice, and its value function is a 4-level U-Net encoder (H=64 must pool
to 1), larger than diffctl's MLP value head. Score rows differ in replanning as well as in the
solver: the slow and cold settings plan once and track until the plan is used up (H - 1 steps), the
warm setting replans every 8 steps. The coarse-to-fine planner executes only its finest level, so it
replans whenever that short plan is used up (every 8 steps with 9 points, every 4 with 5), in every
setting, and it has no warm-start setting."""


def target_rows(scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per checkpoint and fast setting: the steady planning rate (a warm setting's replans are warm) against
    50 Hz and its score against the same checkpoint's slow recipe."""
    rows = []
    for name in dict.fromkeys(r["checkpoint"] for r in scores):
        mine = [r for r in scores if r["checkpoint"] == name]
        slow = next((r for r in mine if r["setting"].startswith("slow")), None)
        if slow is None:
            continue
        for r in mine:
            if r is slow:
                continue
            hz = r.get("warm_plan_hz") or r["plan_hz"]
            delta = round(r["normalized_score"] - slow["normalized_score"], 1)
            rows.append({
                "checkpoint": name, "setting": r["setting"], "steady_plan_hz": hz,
                "score": r["normalized_score"], "slow_score": slow["normalized_score"],
                "score_minus_slow": delta,
                "success": r["success_rate"], "slow_success": slow["success_rate"],
                "meets_target": "yes" if hz >= 50 and delta >= 0 else "no",
            })  # fmt: skip
    return rows


def render(result: dict[str, Any], task: str, episodes: int) -> list[str]:
    """The markdown report of a result dict (rates, and scores when checkpoints were evaluated)."""
    scores_cmd = result["meta"].get("scores_command")
    shown = scores_cmd and scores_cmd != result["meta"]["command"]
    scores_line = f" Scores: `{scores_cmd}`." if shown else ""
    md = [
        "# Planners on CPU (batch 1, 1 thread)",
        "",
        f"`{result['meta']['command']}` on {result['meta']['machine']}.{scores_line}",
        f"Horizon {H} for the rates (the coarse-to-fine planner spans 65 steps with 9-point levels), maze2d "
        "shapes (state 4, goal 2, action 2).",
        "",
        "## Planning rate (random weights; cost does not depend on them)",
        "",
        table(
            result["rates"],
            [
                "impl",
                "model",
                "params",
                "setting",
                "nfe",
                "plan_ms",
                "plan_hz",
                "warm_nfe",
                "warm_plan_ms",
                "warm_plan_hz",
            ],
        ),
    ]
    if result["scores"]:
        md += [
            "",
            f"## {task}: trained checkpoints, "
            + ("slow vs fast settings" if task.startswith("maze2d-") else "value guidance on and off")
            + f" ({episodes} episodes, seed 0)",
            "",
            table(
                result["scores"],
                [
                    "checkpoint",
                    "horizon",
                    "setting",
                    "nfe",
                    "plan_hz",
                    "warm_nfe",
                    "warm_plan_hz",
                    "normalized_score",
                    "success_rate",
                    "act_latency_ms_p50",
                    "act_latency_ms_p99",
                    "act_latency_ms_mean",
                ],
            ),
        ]
        targets = target_rows(result["scores"])
        if targets:
            md += [
                "",
                "### Target: >= 50 Hz planning with a score no worse than the slow recipe (same checkpoint)",
                "",
                table(targets, list(targets[0])),
                "",
                f"With {episodes} episodes the score's standard error is several points, so small differences"
                " either way are noise.",
            ]
    note = result["meta"].get("note")
    return [*md, "", NOTES, *(["", f"Checkpoints: {note}"] if note else [])]


# ----- named recipes (--recipes): the maze suite and the locomotion suite -----------------------------------
PUBLISHED_DIFFUSER = {
    "maze2d-umaze": 113.9, "maze2d-medium": 121.5, "maze2d-large": 123.0,
    "hopper-medium": 58.5, "walker2d-medium": 79.6,
}  # fmt: skip
Settings = dict[str, tuple[dict[str, Any], dict[str, Any]]]
SLOW, FAST = "slow: ddpm 64", "fast: euler 3"  # the maze settings the targets compare
PLAIN, VALUE = "plain: 1 plan, no guidance", "value: 16 plans ranked, guidance 0.1"  # locomotion
CRITIC_SETTING = "critic: 16 plans ranked by TD3+BC's Q, no guidance"


RESULT_COLUMNS = ("recipe", "horizon", "setting", "nfe", "plan_hz", "normalized_score", "scores_per_seed")


def recipe_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Maze recipes: success >= 0.9 and score >= Diffuser's published, and the fast setting at >= 100
    plans/s with >= 95% of the slow score."""
    out = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = {r["setting"]: r for r in rows if r["recipe"] == recipe}
        slow, fast = mine.get(SLOW), mine.get(FAST)
        if slow is None or fast is None:
            continue
        pub = fast["published_diffuser"]
        solved = [
            name for name, row in (("fast", fast), ("slow", slow))
            if row["success_rate"] >= 0.9 and pub is not None and row["normalized_score"] >= pub
        ]  # fmt: skip
        quick = fast["plan_hz"] >= 100 and fast["normalized_score"] >= 0.95 * slow["normalized_score"]
        out.append({
            "recipe": recipe, "task": fast["task"], "fast_score": fast["normalized_score"],
            "slow_score": slow["normalized_score"], "published_diffuser": pub,
            "fast_success": fast["success_rate"], "slow_success": slow["success_rate"],
            "fast_plan_hz": fast["plan_hz"],
            "solves (success >= 0.9, score >= published)": " and ".join(solved) if solved else "no",
            "fast (>= 100 Hz, >= 95% of slow)": "yes" if quick else "no",
        })  # fmt: skip
    return out


def locomotion_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Locomotion recipes: the value-guided (and the critic-ranked) planner against the same checkpoint
    without value model or ranking, with the difference's standard error over seeds."""
    out = []
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = {r["setting"]: r for r in rows if r["recipe"] == recipe}
        plain = mine.get(PLAIN)
        for setting in (VALUE, CRITIC_SETTING):
            ranked = mine.get(setting)
            if ranked is None or plain is None:
                continue
            v = np.array(list(ranked["scores_per_seed"].values()))
            p = np.array(list(plain["scores_per_seed"].values()))
            diff = float(v.mean() - p.mean())
            se = None
            if min(len(v), len(p)) > 1:
                se = float(np.sqrt(v.var(ddof=1) / len(v) + p.var(ddof=1) / len(p)))
            verdict = "no" if diff <= 0 else "within noise" if se is None or diff < 2 * se else "yes"
            out.append({
                "recipe": recipe, "task": ranked["task"], "setting": setting.split(":")[0],
                "score": ranked["normalized_score"], "plain_score": plain["normalized_score"],
                "difference (± s.e. over seeds)": f"{diff:+.1f}" + ("" if se is None else f" ± {se:.1f}"),
                "plan_hz": ranked["plan_hz"], "data_score": ranked["data_score"],
                "above plain (by 2 s.e.)": verdict,
            })  # fmt: skip
    return out


@dataclass(frozen=True)
class RecipeSuite:
    """Named ``diffctl train`` recipes scored under several inference settings of one checkpoint each.

    ``settings`` maps a name to (sampler overrides, planner inference keys); the ``seeded`` settings are
    scored on every ``--seeds`` entry, the others on the first seed only. ``columns`` are the results
    table's columns; ``targets`` turns the rows into the target table."""

    stem: str
    title: str
    recipes: tuple[str, ...]
    settings: Settings
    seeded: tuple[str, ...]
    columns: tuple[str, ...]
    targets: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    intro: str
    settings_note: str


MAZES = RecipeSuite(
    stem="planners_mazes",
    title="Planners on the three mazes: the named recipes",
    recipes=(
        "planner_lite_umaze",
        "planner_lite_medium",
        "planner_lite_large",
        "planner_diffuser_umaze",
        "planner_diffuser_mlp_umaze",
        "planner_diffuser_mlp_medium",
    ),
    settings={  # the recipe configs carry goal_hold 0.5
        SLOW: ({"solver": "ddpm", "steps": 64}, {}),
        FAST: ({"solver": "euler", "steps": 3}, {}),
        "fast: euler 3, no goal hold": ({"solver": "euler", "steps": 3}, {"goal_hold": None}),
        "dpmpp_2m 3 from sigma 80": ({"solver": "dpmpp_2m", "steps": 3}, {}),
        "ddpm 20": ({"solver": "ddpm", "steps": 20}, {}),
    },
    seeded=(FAST,),
    columns=(*RESULT_COLUMNS, "success_rate", "expert_score", "published_diffuser"),
    targets=recipe_targets,
    intro="""
Each recipe is `diffctl train experiment=<recipe>` (D4RL-size data generated on first use). Scores are
D4RL-normalized over {episodes} episodes per seed (fast setting, and every setting of a run with
`--all-seeds`: seeds {seeds}, mean, per-seed values listed; other settings: the first seed). `plan_hz`: median
`plan()` rate at batch 1, one torch thread. `expert_score`: the noiseless scripted expert that generated the
data. `published_diffuser`: Diffuser's Maze2D scores (Janner et al. 2022).""",
    settings_note="""
Settings: `slow` is DDPM over 64 steps per level; `fast` 3 Euler steps per level (sigma 80 to 0.002 on the
Karras grid); `no goal hold` turns the recipe's `goal_hold` off (the planner keeps replanning at the goal);
`dpmpp_2m 3 from sigma 80` is the earlier fast setting, whose 3-point grid leaves plans far from the data;
`ddpm 20` the stochastic sampler on a shorter grid.
Narrative: [docs/experiments/planners.md](../../docs/experiments/planners.md).""",
)
LOCOMOTION = RecipeSuite(
    stem="planners_locomotion",
    title="Value-guided Diffuser on locomotion: the named recipes",
    recipes=("planner_diffuser_hopper", "planner_diffuser_walker"),
    # the recipe configs: 16 plans ranked by the value model, guidance scale 0.1, replanning every step
    settings={
        VALUE: ({}, {}),
        PLAIN: ({}, {"n_plans": 1, "value_scale": 0.0}),
        "ranked only: 16 plans, no guidance": ({}, {"value_scale": 0.0}),
        "guided only: 1 plan, guidance 0.1": ({}, {"n_plans": 1}),
        # --critic RECIPE=CKPT: the 16 plans ranked by an offline-RL critic's Q on the first action
        CRITIC_SETTING: ({}, {"value_scale": 0.0}),
    },
    seeded=(VALUE, PLAIN, CRITIC_SETTING),
    columns=(*RESULT_COLUMNS, "data_score", "published_diffuser"),
    targets=locomotion_targets,
    intro="""
Each recipe is `diffctl train experiment=<recipe>` on the generated SAC-medium data; every row is the same
checkpoint with other inference keys (`dc.load(ckpt, n_plans=1, value_scale=0.0)` is the plain planner).
Scores are D4RL-normalized over {episodes} episodes per seed (the value, plain and critic settings: seeds
{seeds}, mean, per-seed values listed; other settings: the first seed). `plan_hz`: median `plan()` rate at
batch 1, one torch thread. `data_score`: the behaviour policy's mean score in the dataset.
`published_diffuser`: Diffuser on the D4RL datasets of the same name (other data: for scale only).""",
    settings_note="""
Settings: 5 Euler steps (sigma 80 to 0.002 on the Karras grid) unless named; the planner replans every step
and executes the best plan's first action.
Narrative: [docs/experiments/planners.md](../../docs/experiments/planners.md).""",
)
SUITES = {"mazes": MAZES, "locomotion": LOCOMOTION}


def train_recipe(recipe: str, run_dir: Path, overrides: list[str]) -> float | None:
    """``diffctl train experiment=<recipe>`` into ``run_dir`` unless its checkpoint exists; seconds taken."""
    from diffctl.train.pipeline import compose_config, run

    if (run_dir / "checkpoint" / "config.json").exists():
        return None
    start = time.perf_counter()
    cfg = compose_config([
        f"experiment={recipe}", f"run_dir={run_dir}", "eval.episodes=0", "training.progress=false",
        *overrides,
    ])  # fmt: skip
    run(cfg)
    return round(time.perf_counter() - start, 1)


def dataset_name(run_dir: Path) -> str:
    """The name of the dataset the run trained on (``task.dataset.name``, e.g. hopper-medium)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.load(run_dir / "config.yaml").task.dataset.name)


def card_scores(run_dir: Path) -> dict[str, float | None]:
    """From the card of the run's dataset: the noiseless scripted expert's normalized score (mazes) and the
    behaviour policy's mean normalized score."""
    from omegaconf import OmegaConf

    from diffctl.datasets.store import EpisodeStore

    conf = OmegaConf.load(run_dir / "config.yaml")
    behaviour = dict(EpisodeStore.open(conf.task.dataset.path).attrs).get("behaviour_policy") or {}
    expert = (behaviour.get("noiseless_expert") or {}).get("normalized_score")
    data = behaviour.get("normalized_score")
    return {
        "expert_score": None if expert is None else round(float(expert), 1),
        "data_score": None if data is None else round(float(data), 1),
    }


def recipe_rows(
    suite: RecipeSuite,
    recipes: list[str],
    work: Path,
    episodes: int,
    seeds: list[int],
    workers: int | None,
    overrides: list[str],
    critics: dict[str, str] | None = None,
    only: list[str] | None = None,
    all_seeds: bool = False,
) -> list[dict[str, Any]]:
    """Train (or reuse) each recipe and score every setting of ``suite``: ``episodes`` per seed, every seed
    for ``suite.seeded`` settings and ``seeds[0]`` only for the others; plan rate at batch 1. The critic
    setting runs for recipes named in ``critics`` (recipe -> offline-RL checkpoint) and is skipped else;
    ``only`` restricts the settings scored (their rows replace the saved ones, the others are kept);
    ``all_seeds`` scores every setting on every seed."""
    import diffctl as dc
    from diffctl.envs.registry import make_env
    from diffctl.improve.verifiers import QVerifier

    critics = critics or {}

    rows = []
    for recipe in recipes:
        run_dir = work / recipe
        seconds = train_recipe(recipe, run_dir, overrides)
        ckpt = run_dir / "checkpoint"
        task_name = str(json.loads((ckpt / "config.json").read_text())["task"])
        dataset = dataset_name(run_dir)
        data = card_scores(run_dir)
        obs = make_env(task_name, seed=0).reset(seed=0)[0]
        for setting, (sampler, keys) in suite.settings.items():
            if (only and setting not in only) or (setting == CRITIC_SETTING and recipe not in critics):
                continue
            agent = dc.load(ckpt, **sampler, **keys)
            if setting == CRITIC_SETTING:
                agent.rank_with(QVerifier(dc.load(critics[recipe])))
            rate = plan_rates(agent, obs, 10 if sampler.get("steps", 0) < 32 else 3)
            results = []
            for seed in seeds if setting in suite.seeded or all_seeds else seeds[:1]:
                start = time.perf_counter()
                res = dc.evaluate(agent, task_name, episodes=episodes, seed=seed, n_workers=workers)
                results.append((seed, res, time.perf_counter() - start))
                print(
                    recipe, setting, seed, round(res["normalized_score"], 1), res["success_rate"], flush=True
                )
            scores = [float(r["normalized_score"]) for _, r, _ in results]
            rows.append({
                "recipe": recipe, "task": task_name, "horizon": agent.horizon, "setting": setting, **rate,
                "normalized_score": round(float(np.mean(scores)), 1),
                "score_std_over_seeds": round(float(np.std(scores)), 1) if len(scores) > 1 else None,
                "scores_per_seed": {str(s): round(float(r["normalized_score"]), 1) for s, r, _ in results},
                "success_rate": round(float(np.mean([r["success_rate"] for _, r, _ in results])), 3),
                "episodes_per_seed": episodes, **data,
                "published_diffuser": PUBLISHED_DIFFUSER.get(dataset),
                "train_seconds": seconds, "eval_seconds": round(sum(t for *_, t in results), 1),
                **({"critic": critics[recipe]} if setting == CRITIC_SETTING else {}),
            })  # fmt: skip
    return rows


def earlier_runs(meta: dict[str, Any]) -> str:
    """The sentence naming the earlier commands whose rows a report kept (empty when there are none)."""
    earlier = meta.get("earlier_commands") or []
    if not earlier:
        return ""
    return " Rows not scored by it come from the earlier runs " + "; ".join(f"`{c}`" for c in earlier) + "."


def render_recipes(result: dict[str, Any], suite: RecipeSuite) -> list[str]:
    meta = result["meta"]
    rows = [{**r, "scores_per_seed": " / ".join(map(str, r["scores_per_seed"].values()))}
            for r in result["rows"]]  # fmt: skip
    keys = list(suite.columns)
    targets = suite.targets(result["rows"])
    return [
        f"# {suite.title}",
        "",
        f"`{meta['command']}` on {meta['machine']}." + earlier_runs(meta),
        "",
        " ".join(suite.intro.format(episodes=meta["episodes"], seeds=meta["seeds"]).split()),
        "",
        table(rows, keys),
        "",
        "## Targets",
        "",
        table(targets, list(targets[0])) if targets else "(no recipe with both compared settings)",
        "",
        " ".join(suite.settings_note.split()),
        *(["", f"Note: {meta['note']}"] if meta.get("note") else []),
    ]


def main_recipes(args: argparse.Namespace) -> None:
    suite = SUITES[args.suite]
    out = Path("/tmp/diffctl-bench" if args.quick else args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{suite.stem}.json", out / f"{suite.stem}.md"
    if args.render_only:
        result = json.loads(json_path.read_text())
    else:
        overrides = ["training.steps=20", "training.batch_size=8"] if args.quick else []
        work = out / "recipe-runs" if args.quick else Path(args.work)
        critics = dict(spec.split("=", 1) for spec in args.critic)
        rows = recipe_rows(suite, args.recipes, work, args.episodes, args.seeds, args.workers, overrides,
                           critics=critics, only=args.settings, all_seeds=args.all_seeds)  # fmt: skip
        meta = {
            "command": "python benchmarks/planners.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.platform()} ({os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread)",
            "episodes": args.episodes, "seeds": args.seeds, "note": args.note,
        }  # fmt: skip
        if json_path.exists():  # keep the rows of settings not rerun now, and the commands that made them
            saved = json.loads(json_path.read_text())
            fresh = {(r["recipe"], r["setting"]) for r in rows}
            rows = [r for r in saved["rows"] if (r["recipe"], r["setting"]) not in fresh] + rows
            earlier = [*saved["meta"].get("earlier_commands", []), saved["meta"]["command"]]
            meta["earlier_commands"] = [c for c in dict.fromkeys(earlier) if c != meta["command"]]
        order = {name: i for i, name in enumerate(suite.recipes)}
        settings = {name: i for i, name in enumerate(suite.settings)}
        rows.sort(
            key=lambda r: (order.get(r["recipe"], len(order)), settings.get(r["setting"], len(settings)))
        )
        result = {"meta": meta, "rows": rows}
        write_text(json_path, json.dumps(result, indent=2) + "\n")
    md = render_recipes(result, suite)
    write_text(md_path, "\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", default=[], help="NAME=DIR of a trained planner")
    parser.add_argument("--task", default="maze2d-umaze")
    parser.add_argument("--episodes", type=int, default=None, help="per seed (default 20; --recipes: 50)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-rates", action="store_true", help="only the checkpoint scores")
    parser.add_argument("--keep-scores", action="store_true", help="only the rates; keep the saved scores")
    parser.add_argument("--quick", action="store_true", help="smoke run into /tmp")
    parser.add_argument("--train", default=None, help="work dir: generate data and train both planners there")
    parser.add_argument("--note", default=None, help="how the checkpoints were trained (kept in the report)")
    parser.add_argument("--render-only", action="store_true", help="rewrite planners.md from planners.json")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="locomotion stores (--train)")
    parser.add_argument("--planners", nargs="+", default=list(PLANNERS), choices=PLANNERS, help="to --train")
    parser.add_argument(
        "--recipes", nargs="*", default=None, help="score the named recipes of --suite (all: none given)"
    )
    parser.add_argument("--suite", choices=sorted(SUITES), default="mazes", help="--recipes: which suite")
    parser.add_argument(
        "--critic", action="append", default=[], help="--recipes: RECIPE=CKPT of an offline-RL critic"
    )
    parser.add_argument("--settings", nargs="+", default=None, help="--recipes: score only these settings")
    parser.add_argument("--all-seeds", action="store_true", help="--recipes: every setting on every seed")
    parser.add_argument("--work", default="runs/planner-recipes", help="--recipes: where the runs live")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="--recipes: evaluation seeds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.episodes is None:
        args.episodes = 20 if args.recipes is None else 10 if args.suite == "locomotion" else 50
    if args.recipes is not None:
        args.recipes = args.recipes or list(SUITES[args.suite].recipes)
        main_recipes(args)
        return
    out = Path("/tmp/diffctl-bench" if args.quick else args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "planners" if args.task == "maze2d-umaze" else f"planners_{args.task}"
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    if args.render_only:
        result = json.loads(json_path.read_text())
        if args.note:
            result["meta"]["note"] = args.note
            write_text(json_path, json.dumps(result, indent=2) + "\n")
        md = render(result, result["meta"]["task"], int(result["meta"].get("episodes", args.episodes)))
        write_text(md_path, "\n".join(md) + "\n")
        print("\n".join(md))
        return
    repeats = 2 if args.quick else args.repeats
    settings = dict(list(SETTINGS.items())[2:]) if args.quick else SETTINGS
    rates = (
        []
        if args.skip_rates
        else rate_rows(repeats, settings) + diffusers_rows(repeats, [8] if args.quick else [64, 8])
    )
    budget = None
    if args.train:
        budget = QUICK_BUDGET if args.quick else TRAIN_BUDGET
        start = time.perf_counter()
        args.checkpoint += train_checkpoints(
            Path(args.train), budget, args.task, args.data_dir, planners=tuple(args.planners)
        )
        train_seconds = round(time.perf_counter() - start, 1)
    scores = score_rows(args.checkpoint, args.task, args.episodes, args.workers) if args.checkpoint else []
    meta = {
        "command": "python benchmarks/planners.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.platform()} ({os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread)",
        "horizon": H, "task": args.task, "episodes": args.episodes, "note": args.note,
    }  # fmt: skip
    if scores:
        meta["scores_command"] = meta["command"]
    if budget is not None:
        meta["train_budget"] = asdict(budget)
        meta["train_seconds"] = train_seconds
        meta["note"] = args.note or train_note(budget, train_seconds, args.task, tuple(args.planners))
    result = {"meta": meta, "rates": rates, "scores": scores}
    if (args.skip_rates or args.keep_scores) and json_path.exists():
        saved = json.loads(json_path.read_text())
        if args.skip_rates:
            result["rates"] = saved.get("rates", [])
        if args.keep_scores:
            result["scores"] = saved.get("scores", [])
            for key in ("note", "train_budget", "train_seconds", "episodes"):
                if key in saved["meta"]:
                    meta[key] = saved["meta"][key]
            meta["scores_command"] = saved["meta"].get("scores_command", saved["meta"]["command"])
    md = render(result, args.task, args.episodes)
    write_text(json_path, json.dumps(result, indent=2) + "\n")
    write_text(md_path, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
