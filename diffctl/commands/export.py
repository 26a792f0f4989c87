"""``diffctl export CHECKPOINT --format {torchscript,onnx} --out PATH``: one denoising step + parity check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a diffusion policy's denoiser step to TorchScript or ONNX, checked against PyTorch",
        description="Export D(x, sigma, obs[, goal]) -> x0_hat of CHECKPOINT (see diffctl.deploy.export); "
        "writes PATH and PATH.json (inputs, sigma grid, normalizers) and prints the parity error.",
    )
    parser.add_argument("checkpoint", help="agent directory (config.json + model.safetensors)")
    parser.add_argument("--format", dest="fmt", choices=("torchscript", "onnx"), required=True)
    parser.add_argument("--out", required=True, help="output file (.pt or .onnx)")
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="max abs error allowed by the parity check"
    )
    parser.add_argument("--no-check", action="store_true", help="skip the parity check")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from diffctl.agents import load
    from diffctl.deploy.export import export_denoiser, parity

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint {checkpoint} is not a directory (expected a saved agent)")
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a directory; expected the path of the file to write")
    torch.set_num_threads(1)
    agent = load(checkpoint)
    export_denoiser(agent, args.out, args.fmt)
    print(f"exported {args.fmt}: {args.out} (+ {args.out}.json)")
    if args.no_check:
        return 0
    try:
        report = parity(agent, args.out, args.fmt)
    except ImportError as err:
        print(f"parity check skipped: {err} (pip install onnxruntime)")
        return 0
    print(json.dumps(report))
    if report["max_abs_err"] > args.tolerance:
        print(f"parity check FAILED: max abs error {report['max_abs_err']:.3g} > {args.tolerance}")
        return 1
    print("parity check passed")
    return 0
