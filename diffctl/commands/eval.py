"""``diffctl eval CHECKPOINT [--task T]``: roll a saved agent out in simulation, print a table, write JSON.
A frame world model is scored instead against the recorded frames of its held-out episodes (``--video``: real
and imagined side by side)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffctl.atomic import write_json

TABLE_KEYS = (
    "success_rate",
    "mean_return",
    "normalized_score",
    "act_latency_ms_p50",
    "act_latency_ms_p99",
    "act_latency_ms_mean",
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a saved agent in simulation (success, return, normalized score, act latency)",
        description="Load CHECKPOINT (optionally with another sampler) and roll it out in TASK.",
    )
    parser.add_argument("checkpoint", help="agent directory (config.json + model.safetensors)")
    parser.add_argument("--task", default=None, help="task name (default: the task of the checkpoint's run)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solver", default=None, help="sampler override, e.g. ddpm, ddim, dpmpp_2m, heun")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps override")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="other load overrides, repeatable: e.g. n_candidates=16, selection=argmax (offline RL agents)",
    )
    parser.add_argument(
        "--steer",
        choices=("best_of_n", "fk", "gradient"),
        default=None,
        help="steer each chunk by --verifier (diffctl.improve): best_of_n, fk particles or value gradient",
    )
    parser.add_argument(
        "--verifier",
        default=None,
        help="verifier checkpoint for --steer: a world model or an offline-RL agent",
    )
    parser.add_argument(
        "--verifier-reward",
        choices=("model", "progress"),
        default="model",
        help="world-model verifier: its predicted rewards, or the task's goal-distance progress",
    )
    parser.add_argument(
        "--steer-set",
        dest="steer_settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="steering settings, repeatable: n=16, lam=10, scale=0.1 (diffctl.improve.SteeringConfig)",
    )
    parser.add_argument("--workers", type=int, default=None, help="rollout processes (0 = in this process)")
    parser.add_argument("--json", dest="json_out", default=None, help="write the full result as JSON here")
    parser.add_argument("--video", default=None, help="record episode 0 (.mp4 or .gif)")
    parser.add_argument("--plot", default=None, help="maze tasks: trajectory plot (.png)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from diffctl.agents import load
    from diffctl.envs.evaluate import evaluate
    from diffctl.envs.registry import get_task

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint {checkpoint} is not a directory (expected a saved agent)")
    task = args.task or _task_of_run(checkpoint)
    get_task(task)
    overrides = {k: v for k, v in (("solver", args.solver), ("steps", args.steps)) if v is not None}
    overrides.update(parse_settings(args.settings))
    agent = load(checkpoint, **overrides)
    if not callable(getattr(agent, "act", None)):
        return _eval_world_model(agent, args)
    steering: dict[str, Any] = {}
    if args.steer or args.verifier:
        from diffctl.improve.build import steered_agent

        if not (args.steer and args.verifier):
            raise ValueError(
                "--steer and --verifier go together: a method and the checkpoint that scores chunks"
            )
        agent = steered_agent(
            agent, args.verifier, reward=args.verifier_reward, method=args.steer,
            **parse_settings(args.steer_settings),
        )  # fmt: skip
        steering = {"steering": {**agent.config.to_dict(), "verifier": args.verifier}}
    result = evaluate(
        agent,
        task,
        episodes=args.episodes,
        seed=args.seed,
        n_workers=args.workers,
        video_path=args.video,
        plot_path=args.plot,
    )
    sampler = getattr(getattr(agent, "policy", agent), "sampler", None)
    report = {
        "checkpoint": str(checkpoint),
        "solver": getattr(sampler, "solver", None),
        "steps": getattr(sampler, "steps", None),
        **steering,
        **result,
    }
    cost = getattr(agent, "cost", {})
    if cost.get("decisions"):  # in-process rollouts: the steered decisions' mean cost
        report["nfe_per_decision"] = cost["nfe"] / cost["decisions"]
        report["verifier_calls_per_decision"] = cost["verifier_calls"] / cost["decisions"]
    print(format_table(report))
    if args.json_out:
        write_json(args.json_out, report)
        print(f"results: {args.json_out}")
    return 0


FRAME_HORIZONS = (1, 4, 16)


def _eval_world_model(model: Any, args: argparse.Namespace) -> int:
    """Imagine 16 frames from ``--episodes`` held-out starts of the model's dataset under the recorded
    actions; print per-frame RMSE at horizons 1, 4, 16 beside copying the last frame."""
    from diffctl.world_models.frames import FrameWindows, FrameWorldModel

    if not isinstance(model, FrameWorldModel):
        raise ValueError(
            f"diffctl eval scores agents that act and frame world models; {type(model).__name__} is scored "
            "by benchmarks/world_models.py"
        )
    from diffctl.datasets import EpisodeStore
    from diffctl.world_models.frame_eval import (
        frame_errors,
        held_out_starts,
        imagine_recorded,
        write_comparison_video,
    )

    path = (model.dataset or {}).get("path")
    if not path:
        raise ValueError(f"{args.checkpoint}: the model records no dataset path to compare against")
    data = FrameWindows(EpisodeStore.open(path), model.config.image_key, model.frame_size)
    model.fit(data)
    horizon = max(FRAME_HORIZONS)
    run = imagine_recorded(
        model, data, held_out_starts(data, horizon, args.episodes, args.seed), horizon, args.seed
    )
    errors = frame_errors(run, FRAME_HORIZONS)
    report = {
        "checkpoint": str(args.checkpoint),
        "dataset": path,
        "starts": len(run["real"]),
        "errors": errors,
    }
    print(f"{'horizon':>7}  {'model RMSE':>10}  {'copy RMSE':>9}  {'reward MAE':>10}")
    for h, e in errors.items():
        print(f"{h:>7}  {e['model_rmse']:>10.4f}  {e['copy_rmse']:>9.4f}  {e['reward_mae']:>10.4f}")
    if args.video:
        report["video_path"] = str(write_comparison_video(args.video, run))
        print(f"video (real | imagined): {report['video_path']}")
    if args.json_out:
        write_json(args.json_out, report)
        print(f"results: {args.json_out}")
    return 0


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["n_candidates=16", "selection=argmax"]`` -> ``{"n_candidates": 16, "selection": "argmax"}`` (values
    read as YAML scalars: ints, floats, booleans, strings)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def _task_of_run(checkpoint: Path) -> str:
    """The task the checkpoint was trained on: ``task`` in its ``config.json`` (written by every run), else
    ``task.name`` in the run's config.yaml next to (or up to two levels above) the checkpoint."""
    from omegaconf import OmegaConf

    from diffctl.core.persistence import read_config_json

    task = read_config_json(checkpoint).get("task")
    if task:
        return str(task)
    root = checkpoint.resolve()
    for candidate in (root / "config.yaml", *(p / "config.yaml" for p in root.parents[:2])):
        if candidate.is_file():
            try:
                name = OmegaConf.select(OmegaConf.load(candidate), "task.name")
            except Exception as err:
                raise ValueError(f"{candidate} is not a readable run config: {err}") from err
            if name:
                return str(name)
    raise ValueError(
        f"--task is required: {checkpoint}/config.json records no task (saved outside a diffctl run) and no "
        "run config.yaml with task.name is near it"
    )


def format_table(report: dict[str, Any]) -> str:
    """Two-column text table of the headline numbers."""
    rows = [("task", report.get("task")), ("episodes", report.get("episodes"))]
    rows += [("solver", report.get("solver")), ("steps", report.get("steps"))]
    rows += [(key, report.get(key)) for key in TABLE_KEYS]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 10}"]
    for key, value in rows:
        text = f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))
        lines.append(f"{key.ljust(width)}  {text}")
    return "\n".join(lines)
