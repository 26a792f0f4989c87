"""Image benchmark: sample quality vs NFE per solver, adaptive guidance, best-of-N seeds, inversion, the
diffusion classifier, and images/s against diffusers.

The model is trained through the pipeline (`diffctl train task=digits image_model=unet2d experiment=images`)
unless --checkpoint names one. Quality is measured without downloaded weights: a small CNN trained here on
the training split scores class-conditional samples (accuracy) and gives the features of a Frechet distance
(not FID). A second CNN (another seed and width) is the verifier of best-of-N seed selection, so selection
and scoring never use the same network.

    PYTHONPATH=. python benchmarks/images.py                      # full run: benchmarks/results/images.*
    PYTHONPATH=. python benchmarks/images.py --checkpoint runs/digits-unet2d/checkpoint
    PYTHONPATH=. python benchmarks/images.py --fast               # smoke test (tiny budgets, temp dir)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from diffctl.atomic import write_text
from diffctl.datasets import EpisodeStore
from diffctl.datasets.images import ImageDataset
from diffctl.images import ImageDiffusion
from diffctl.images.metrics import feature_frechet, label_verifier, predict, train_classifier

SOLVERS = ("euler", "ddpm", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde")  # ddim at eta 0 is euler
NFES = (3, 5, 10, 20, 50)
GUIDANCE = 2.0
TRAIN_COMMAND = "diffctl train task=digits image_model=unet2d experiment=images"


def steps_for(solver: str, nfe: int) -> int:
    """Grid steps giving about ``nfe`` evaluations (Heun: 2 steps - 1 per step pair)."""
    return max(1, (nfe + 1) // 2) if solver == "heun" else nfe


def train_model(run_dir: Path, fast: bool) -> Path:
    from diffctl.train.pipeline import compose_config, run

    overrides = ["task=digits", "image_model=unet2d", "experiment=images", f"run_dir={run_dir}"]
    if fast:
        overrides += ["training.steps=20", "training.warmup_steps=5", "training.checkpoint_every=0"]
    run(compose_config(overrides))
    return run_dir / "checkpoint"


def per_class_labels(n: int, classes: int) -> torch.Tensor:
    return torch.arange(n) % classes


def quality(model: ImageDiffusion, cnn: Any, real: torch.Tensor, n: int, **options: Any) -> dict[str, float]:
    labels = per_class_labels(n, model.num_classes)
    stats: dict[str, Any] = {}
    t0 = time.perf_counter()
    x = model.sample(n, labels=labels, generator=torch.Generator().manual_seed(0), stats=stats, **options)
    seconds = time.perf_counter() - t0
    acc = float((predict(cnn, x) == labels).float().mean())
    return {
        "accuracy": acc,
        "frechet": feature_frechet(cnn, real, x),
        "nfe": float(stats["nfe"]),
        "seconds": seconds,
    }


def solver_grid(
    model: ImageDiffusion, cnn: Any, real: torch.Tensor, n: int, nfes: tuple[int, ...]
) -> list[dict]:
    rows = []
    for solver in SOLVERS:
        for nfe in nfes:
            for guidance in (1.0, GUIDANCE):
                steps = steps_for(solver, nfe)
                q = quality(model, cnn, real, n, solver=solver, steps=steps, guidance=guidance)
                rows.append({"solver": solver, "steps": steps, "guidance": guidance, **q})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def adaptive_rows(model: ImageDiffusion, cnn: Any, real: torch.Tensor, n: int) -> list[dict]:
    rows = []
    for threshold in (None, 0.999, 0.995, 0.99, 0.98):
        q = quality(model, cnn, real, n, solver="dpmpp_2m", steps=10, guidance=GUIDANCE, adaptive=threshold)
        rows.append({"cos_threshold": threshold, **q})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def best_of_rows(model: ImageDiffusion, cnn: Any, verifier: Any, n: int) -> list[dict]:
    rows = []
    labels = per_class_labels(n, model.num_classes)
    for k in (1, 4, 8):
        x = model.sample_best_of(
            n,
            k,
            label_verifier(verifier),
            labels=labels,
            generator=torch.Generator().manual_seed(0),
            solver="dpmpp_2m",
            steps=10,
            guidance=1.0,
        )
        rows.append(
            {"candidates": k, "accuracy": float((predict(cnn, x) == labels).float().mean()), "nfe": 10.0 * k}
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def inversion_rows(model: ImageDiffusion, images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    rows = []
    for method in ("ddim", "edict"):
        for steps in (10, 50):
            t0 = time.perf_counter()
            rec = model.reconstruct(model.invert(images, labels=labels, method=method, steps=steps))
            err = (rec - images).abs()
            rows.append(
                {
                    "method": method,
                    "steps": steps,
                    "max_abs_err": float(err.max()),
                    "mean_abs_err": float(err.mean()),
                    "seconds": time.perf_counter() - t0,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def classifier_row(model: ImageDiffusion, cnn: Any, images: torch.Tensor, labels: torch.Tensor) -> dict:
    t0 = time.perf_counter()
    result = model.classify(images, details=True)
    return {
        "images": len(images),
        "diffusion_accuracy": float((result.labels == labels).float().mean()),
        "nfe_per_image": result.nfe_per_image,
        "nfe_without_elimination": model.config.classify_levels * model.num_classes,
        "seconds": time.perf_counter() - t0,
        "cnn_accuracy": float((predict(cnn, images) == labels).float().mean()),
    }


def diffusers_unet(model: ImageDiffusion) -> Any:
    """A diffusers UNet2DModel of about the same size as our U-Net (channels per level, one block per
    level, attention at the lowest resolution, class embedding)."""
    from diffusers import UNet2DModel

    kw = model.config.backbone_kwargs
    widths = tuple(kw["base"] * m for m in kw["mults"])
    down = tuple("AttnDownBlock2D" if i == len(widths) - 1 else "DownBlock2D" for i in range(len(widths)))
    up = tuple("AttnUpBlock2D" if i == 0 else "UpBlock2D" for i in range(len(widths)))
    return UNet2DModel(
        sample_size=model.config.image_size,
        in_channels=model.config.channels,
        out_channels=model.config.channels,
        block_out_channels=widths,
        layers_per_block=kw["blocks"],
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=kw["groups"],
        num_class_embeds=model.num_classes + 1,
    ).eval()


def throughput(model: ImageDiffusion, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """Images/s at ``batch`` and equal NFE: ours (dpmpp_2m, ``steps``) vs diffusers' UNet2DModel +
    DPMSolverMultistepScheduler (``steps``), one thread, interleaved repeats."""
    from diffusers import DPMSolverMultistepScheduler

    torch.set_num_threads(1)
    unet = diffusers_unet(model)
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000)
    labels = per_class_labels(batch, model.num_classes)

    @torch.no_grad()
    def theirs() -> None:
        scheduler.set_timesteps(steps)
        x = torch.randn(batch, *model.image_shape)
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t, class_labels=labels).sample, t, x).prev_sample

    def ours() -> None:
        model.sample(batch, labels=labels, solver="dpmpp_2m", steps=steps)

    times: dict[str, list[float]] = {"diffctl": [], "diffusers": []}
    for fn in (ours, theirs):
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in (("diffctl", ours), ("diffusers", theirs)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    params = {
        "diffctl": sum(p.numel() for p in model.network.parameters()),
        "diffusers": sum(p.numel() for p in unet.parameters()),
    }
    out = {
        k: {"images_per_s": batch / statistics.median(v), "params": params[k], "seconds": v}
        for k, v in times.items()
    }
    torch.set_num_threads(os.cpu_count() or 1)
    return {"batch": batch, "steps": steps, **out}


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    lines = [
        "# Image generation on digits (16x16, CPU)",
        "",
        f"`PYTHONPATH=. python benchmarks/images.py` on {cfg['platform']} ({cfg['cpus']} CPUs), torch "
        f"{cfg['torch']}. Model: `{TRAIN_COMMAND}` ({cfg['params']:,} parameters, "
        f"{cfg['train_steps']} steps"
        f"{'' if cfg['train_seconds'] is None else ', ' + str(cfg['train_seconds']) + ' s'} of "
        f"training). Metric CNN: held-out accuracy {report['cnn_held_out_accuracy']:.3f}; scores {cfg['n']} "
        f"samples per cell ({cfg['n'] // 10} per class). Feature Frechet: Frechet distance between held-out "
        "digits and samples in that CNN's 128-d feature space (not FID; lower is better).",
        "",
        f"## Sample accuracy / feature Frechet vs NFE (guidance 1 and {GUIDANCE})",
        "",
        "| solver | NFE (g=1) | accuracy g=1 | Frechet g=1 | accuracy g=2 | Frechet g=2 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = report["solvers"]
    for r in rows:
        if r["guidance"] != 1.0:
            continue
        g = next(
            x
            for x in rows
            if x["solver"] == r["solver"] and x["steps"] == r["steps"] and x["guidance"] != 1.0
        )
        lines.append(
            f"| {r['solver']} | {r['nfe']:.0f} | {r['accuracy']:.3f} | {r['frechet']:.2f} "
            f"| {g['accuracy']:.3f} "
            f"| {g['frechet']:.2f} |"
        )
    lines += [
        "",
        "Guided rows cost twice the NFE of the g=1 column (conditional + unconditional).",
        "",
        f"## Adaptive guidance (dpmpp_2m, 10 steps, g={GUIDANCE})",
        "",
        "| stop guiding at cos >= | NFE | accuracy | Frechet |",
        "|---|---:|---:|---:|",
    ]
    for r in report["adaptive"]:
        lines.append(
            f"| {r['cos_threshold'] or 'never (plain CFG)'} | {r['nfe']:.1f} | {r['accuracy']:.3f} "
            f"| {r['frechet']:.2f} |"
        )
    lines += [
        "",
        "## Best-of-N seeds (dpmpp_2m, 10 steps, g=1; verifier: a second CNN)",
        "",
        "| candidates | NFE per image | accuracy |",
        "|---:|---:|---:|",
    ]
    for r in report["best_of"]:
        lines.append(f"| {r['candidates']} | {r['nfe']:.0f} | {r['accuracy']:.3f} |")
    lines += [
        "",
        f"## Inversion ({report['inversion_images']} held-out digits, float32 network)",
        "",
        "| method | steps | max abs error | mean abs error | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in report["inversion"]:
        lines.append(
            f"| {r['method']} | {r['steps']} | {r['max_abs_err']:.2e} | {r['mean_abs_err']:.2e} "
            f"| {r['seconds']:.1f} |"
        )
    c = report["classifier"]
    lines += [
        "",
        "## Diffusion classifier (held-out digits)",
        "",
        "| classifier | accuracy | NFE per image |",
        "|---|---:|---:|",
        f"| diffusion classifier ({c['nfe_without_elimination']} NFE without elimination) | "
        f"{c['diffusion_accuracy']:.3f} | {c['nfe_per_image']:.0f} |",
        f"| metric CNN (discriminative) | {c['cnn_accuracy']:.3f} | - |",
    ]
    t = report["throughput"] or {}
    lines += (
        []
        if not t
        else [
            "",
            f"## Images/s at batch {t['batch']}, {t['steps']} NFE, one thread",
            "",
            "| implementation | parameters | images/s |",
            "|---|---:|---:|",
            f"| diffctl UNet2d + dpmpp_2m | {t['diffctl']['params']:,} "
            f"| {t['diffctl']['images_per_s']:.1f} |",
            f"| diffusers UNet2DModel + DPMSolverMultistepScheduler | {t['diffusers']['params']:,} | "
            f"{t['diffusers']['images_per_s']:.1f} |",
        ]
    )
    lines += ["", "## Targets", "", "| target | result | met |", "|---|---|---|"]
    for name, value, met in report["targets"]:
        lines.append(f"| {name} | {value} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def targets(report: dict[str, Any]) -> list[tuple[str, str, bool]]:
    at10 = [r for r in report["solvers"] if r["solver"] == "dpmpp_2m" and round(r["nfe"]) == 10]
    best10 = max(r["accuracy"] for r in at10)
    edict50 = next(r for r in report["inversion"] if r["method"] == "edict" and r["steps"] == 50)
    plain = report["adaptive"][0]
    equal = [r for r in report["adaptive"][1:] if r["accuracy"] >= plain["accuracy"] - 0.01]
    saving = max((1 - r["nfe"] / plain["nfe"] for r in equal), default=0.0)
    t = report["throughput"]
    ratio = t["diffctl"]["images_per_s"] / t["diffusers"]["images_per_s"] if t else float("nan")
    c = report["classifier"]
    return [
        (
            "class-conditional sample accuracy >= 95% at 10 NFE (dpmpp_2m: 10 steps g=1 or 5 steps g=2)",
            f"{best10:.3f}",
            best10 >= 0.95,
        ),
        (
            "EDICT reconstruction max error <= 1e-4 (50 steps)",
            f"{edict50['max_abs_err']:.1e}",
            edict50["max_abs_err"] <= 1e-4,
        ),
        (
            "diffusion-classifier accuracy >= 90% on held-out digits",
            f"{c['diffusion_accuracy']:.3f}",
            c["diffusion_accuracy"] >= 0.9,
        ),
        (
            "adaptive guidance >= 20% fewer NFE at equal accuracy (within 1 point)",
            f"{100 * saving:.0f}%",
            saving >= 0.2,
        ),
        ("images/s >= diffusers' at equal NFE", f"{ratio:.2f}x", ratio >= 1.0),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", default=None, help="a trained digits image model (default: train one)"
    )
    parser.add_argument("--fast", action="store_true", help="smoke-test budget (not a result)")
    parser.add_argument("--out", default=None, help="results dir (default benchmarks/results; --fast: temp)")
    parser.add_argument("--render", default=None, help="only rewrite the markdown of this images.json")
    args = parser.parse_args()
    if args.render:
        report = json.loads(Path(args.render).read_text())
        report["targets"] = targets(report)
        write_text(Path(args.render), json.dumps(report, indent=2))
        write_text(Path(args.render).with_suffix(".md"), markdown(report))
        return
    out = Path(args.out or (tempfile.mkdtemp() if args.fast else "benchmarks/results"))
    t0 = time.perf_counter()
    checkpoint = (
        Path(args.checkpoint)
        if args.checkpoint
        else train_model(Path(tempfile.mkdtemp()) / "digits", args.fast)
    )
    train_seconds = None if args.checkpoint else round(time.perf_counter() - t0)
    summary = checkpoint.parent / "summary.json"
    train_steps = json.loads(summary.read_text())["step"] if summary.is_file() else None
    model = ImageDiffusion.load(checkpoint)
    store = EpisodeStore.open(model.dataset["path"])
    train_x, train_y = ImageDataset(store, "train").tensors()
    test_x, test_y = ImageDataset(store, "held_out").tensors()
    steps = 60 if args.fast else 1500
    cnn = train_classifier(train_x, train_y, 10, steps=steps, seed=0)
    verifier = train_classifier(train_x, train_y, 10, steps=steps, seed=1, width=24)
    n = 40 if args.fast else 200
    report: dict[str, Any] = {
        "config": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "n": n,
            "checkpoint": str(checkpoint),
            "params": sum(p.numel() for p in model.network.parameters()),
            "train_seconds": train_seconds,
            "train_command": TRAIN_COMMAND,
            "train_steps": train_steps,
        },
        "cnn_held_out_accuracy": float((predict(cnn, test_x) == test_y).float().mean()),
    }
    report["solvers"] = solver_grid(model, cnn, test_x, n, (5, 10) if args.fast else NFES)
    report["adaptive"] = adaptive_rows(model, cnn, test_x, n)
    report["best_of"] = best_of_rows(model, cnn, verifier, n // 2)
    m = 16 if args.fast else 64
    report["inversion_images"] = m
    report["inversion"] = inversion_rows(model, test_x[:m], test_y[:m])
    k = 40 if args.fast else len(test_x)
    report["classifier"] = classifier_row(model, cnn, test_x[:k], test_y[:k])
    print(json.dumps(report["classifier"]), flush=True)
    try:
        report["throughput"] = throughput(model, 64, 10, 2 if args.fast else 5)
    except ImportError as err:  # diffusers is an optional peer: its section is skipped
        print(f"diffusers side by side skipped: {err}")
        report["throughput"] = None
    report["targets"] = targets(report)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "images.json", json.dumps(report, indent=2))
    md = markdown(report)
    write_text(out / "images.md", md)
    print(md)


if __name__ == "__main__":
    main()
