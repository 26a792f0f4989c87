"""``diffctl train key=value ...``: compose the hydra config, train, and save the run directory."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an agent from hydra overrides (task=... policy=... sampler=... training.steps=...)",
        description=(
            "Train with the packaged hydra configs. Overrides are key=value pairs, e.g. "
            "`diffctl train task=maze2d-umaze policy=diffusion_unet sampler=dpmpp_2m training.steps=2000`. "
            "Runs under torchrun for data-parallel training."
        ),
    )
    parser.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue the run in RUN_DIR with its own config.yaml from its last checkpoint (overrides may "
        "only change training.steps and what the run logs)",
    )
    parser.set_defaults(func=_run, accepts_extra=True)


def _run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from diffctl.train.pipeline import compose_config, resume_config, run

    overrides = list(getattr(args, "extra", []) or [])
    cfg = compose_config(overrides) if args.resume is None else resume_config(args.resume, overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    if args.resume is not None:
        print(resume_message(Path(args.resume)), file=sys.stderr)
    summary = run(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    best = summary.get("best_score")
    print(f"run directory: {summary['run_dir']}")
    if "loss" in summary:
        print(f"steps: {summary['step']}  final loss: {summary['loss']:.5g}")
    else:  # a fine-tuning run counts simulator steps
        print(f"simulator steps: {summary['env_steps']}")
    final = final_eval(summary["run_dir"])
    if final:
        shown = ", ".join(f"{k} {final[k]:.4g}" for k in FINAL_KEYS if final.get(k) is not None)
        print(f"final checkpoint (step {final['step']}): {shown}")
    if best is not None:
        print(f"best {cfg.training.eval_metric}: {best:.4g} at step {summary['best_step']}")
    print(f"checkpoint: {summary['checkpoint']}")
    curves = Path(summary["run_dir"]) / "learning_curves.png"
    if curves.exists():
        print(f"learning curves: {curves}")
    return 0


FINAL_KEYS = ("normalized_score", "success_rate", "mean_return")


def resume_message(run_dir: Path) -> str:
    """Where a resumed run starts: its newest step checkpoint, or step 0 when it has none yet."""
    from diffctl.train.checkpoint import list_step_checkpoints

    found = list_step_checkpoints(run_dir / "checkpoints")
    if not found:
        return f"resuming {run_dir}: no checkpoint yet: starting from step 0"
    step, path = found[-1]
    return f"resuming {run_dir} from step {step} ({path})"


def final_eval(run_dir: str) -> dict[str, Any] | None:
    """The last closed-loop evaluation a run logged (keys without the ``eval/`` prefix), or None."""
    from diffctl.train.metrics import read_metrics

    evals = [r for r in read_metrics(run_dir) if any(k.startswith("eval/") for k in r)]
    if not evals:
        return None
    return {"step": evals[-1]["step"], **{k[5:]: v for k, v in evals[-1].items() if k.startswith("eval/")}}
