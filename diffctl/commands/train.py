"""``diffctl train key=value ...``: compose the hydra config, train, and save the run directory."""

from __future__ import annotations

import argparse
import os
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
        help="continue the run in RUN_DIR from its last checkpoint",
    )
    parser.set_defaults(func=_run, accepts_extra=True)


def _run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from diffctl.train.pipeline import compose_config, run

    overrides = list(getattr(args, "extra", []) or [])
    if args.resume is not None:
        overrides += [f"run_dir={args.resume}", "training.resume=true"]
    cfg = compose_config(overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        return 0
    summary = run(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    best = summary.get("best_score")
    print(f"run directory: {summary['run_dir']}")
    print(f"steps: {summary['step']}  final loss: {summary['loss']:.5g}")
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


def final_eval(run_dir: str) -> dict[str, Any] | None:
    """The last closed-loop evaluation a run logged (keys without the ``eval/`` prefix), or None."""
    from diffctl.train.metrics import read_metrics

    evals = [r for r in read_metrics(run_dir) if any(k.startswith("eval/") for k in r)]
    if not evals:
        return None
    return {"step": evals[-1]["step"], **{k[5:]: v for k, v in evals[-1].items() if k.startswith("eval/")}}
