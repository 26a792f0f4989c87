"""``diffctl images {sample,invert,edit,classify} CHECKPOINT``: use a trained image model, write grids."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("images", help="sample, invert, edit or classify with an image model")
    sub = parser.add_subparsers(dest="images_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("checkpoint", help="image model directory (runs/<run>/checkpoint)")
        p.add_argument("--seed", type=int, default=0)

    smp = sub.add_parser("sample", help="sample images into a grid (one row per class by default)")
    common(smp)
    smp.add_argument("--n", type=int, default=64, help="number of images")
    smp.add_argument("--label", type=int, default=None, help="one label for all (default: 0, 1, ... in rows)")
    smp.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    smp.add_argument("--adaptive", type=float, default=None, help="stop guiding at this cos similarity")
    smp.add_argument("--solver", default=None)
    smp.add_argument("--steps", type=int, default=None)
    smp.add_argument("--out", default="samples.png", help="grid PNG to write")
    smp.set_defaults(func=_sample)

    for name, help_text in (
        ("invert", "invert images of the model's dataset and reconstruct them (original | reconstruction)"),
        ("edit", "invert images and re-sample them under another label (original | edit)"),
    ):
        p = sub.add_parser(name, help=help_text)
        common(p)
        p.add_argument("--n", type=int, default=8, help="number of held-out images")
        p.add_argument("--method", choices=("edict", "ddim"), default="edict")
        p.add_argument("--steps", type=int, default=50)
        p.add_argument("--data", default=None, help="image store (default: the model's training data)")
        p.add_argument("--out", default=f"{name}.png", help="grid PNG to write")
        if name == "edit":
            p.add_argument("--to", type=int, required=True, help="the label to edit towards")
        p.set_defaults(func=_invert if name == "invert" else _edit)

    cls = sub.add_parser("classify", help="diffusion-classifier accuracy on the held-out images")
    common(cls)
    cls.add_argument("--n", type=int, default=None, help="held-out images to classify (default: all)")
    cls.add_argument("--data", default=None, help="image store (default: the model's training data)")
    cls.set_defaults(func=_classify)


def _model(args: argparse.Namespace, **overrides: Any) -> Any:
    from diffctl.agents import load
    from diffctl.images import ImageDiffusion

    model = load(args.checkpoint, **{k: v for k, v in overrides.items() if v is not None})
    if not isinstance(model, ImageDiffusion):
        raise ValueError(f"{args.checkpoint} holds a {type(model).__name__}, not an image model")
    return model


def _held_out(model: Any, data: str | None, n: int | None) -> tuple[Any, Any]:
    from diffctl.datasets import EpisodeStore
    from diffctl.datasets.images import ImageDataset

    path = data or (model.dataset or {}).get("path")
    if not path:
        raise ValueError("the checkpoint does not record its dataset: pass --data STORE")
    dataset = ImageDataset(EpisodeStore.open(path), split="held_out")
    images, labels = dataset.tensors()
    return images[:n], labels[:n]


def _sample(args: argparse.Namespace) -> int:
    import torch

    from diffctl.images.grid import save_grid

    model = _model(args, solver=args.solver, steps=args.steps)
    labels = None
    if model.num_classes:  # one label for all, or the classes in order, an equal share each
        labels = (
            torch.full((args.n,), args.label)
            if args.label is not None
            else torch.arange(args.n) * model.num_classes // args.n
        )
    stats: dict[str, Any] = {}
    g = torch.Generator().manual_seed(args.seed)
    x = model.sample(
        args.n, labels=labels, guidance=args.guidance, adaptive=args.adaptive, generator=g, stats=stats
    )
    nrow = max(1, args.n // model.num_classes) if model.num_classes and args.label is None else None
    save_grid(x, args.out, nrow=nrow)
    print(f"wrote {args.out}: {args.n} samples, {stats['nfe']:.1f} network evaluations per image")
    return 0


def _inverted(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    model = _model(args)
    images, labels = _held_out(model, args.data, args.n)
    inv = model.invert(
        images, labels=labels if model.num_classes else None, method=args.method, steps=args.steps
    )
    return model, images, labels, inv


def _invert(args: argparse.Namespace) -> int:
    import torch

    from diffctl.images.grid import save_grid

    model, images, _, inv = _inverted(args)
    rec = model.reconstruct(inv)
    err = (rec - images).abs()
    save_grid(torch.cat([images, rec]), args.out, nrow=len(images))
    report = {
        "method": args.method,
        "steps": args.steps,
        "max_abs_err": float(err.max()),
        "mean_abs_err": float(err.mean()),
    }
    print(json.dumps(report))
    print(f"wrote {args.out}: originals (top row) and reconstructions (bottom row)")
    return 0


def _edit(args: argparse.Namespace) -> int:
    import torch

    from diffctl.images.grid import save_grid

    model, images, _, inv = _inverted(args)
    if not model.num_classes:
        raise ValueError("edit needs a class-conditional model")
    edited = model.reconstruct(inv, labels=torch.full((len(images),), args.to))
    save_grid(torch.cat([images, edited]), args.out, nrow=len(images))
    print(f"wrote {args.out}: originals (top row) and edits towards label {args.to} (bottom row)")
    return 0


def _classify(args: argparse.Namespace) -> int:
    import torch

    model = _model(args)
    images, labels = _held_out(model, args.data, args.n)
    result = model.classify(
        images, generator=torch.Generator().manual_seed(args.seed), details=True, progress=True
    )
    accuracy = float((result.labels == labels.to(result.labels.device)).float().mean())
    print(json.dumps({"images": len(images), "accuracy": accuracy, "nfe_per_image": result.nfe_per_image}))
    return 0
