"""``diffctl serve CHECKPOINT --port P``: serve a saved agent over websockets (``diffctl.deploy.server``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a saved agent to robot controllers over websockets (predict_chunk, act, health)",
        description="Load CHECKPOINT and answer predict_chunk / act / reset / health requests on ws://HOST:PORT.",
    )
    parser.add_argument("checkpoint", help="agent directory (config.json + model.safetensors)")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--solver", default=None, help="sampler override, e.g. dpmpp_2m")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps override")
    parser.add_argument(
        "--fused", action="store_true", help="fused sampling: one TorchScript graph per request shape"
    )
    parser.add_argument("--max-bytes", type=int, default=4 << 20, help="largest accepted request")
    parser.add_argument(
        "--max-connections", type=int, default=64, help="clients served at once (more are refused, 1013)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("DIFFCTL_SERVE_TOKEN"),
        help="shared token every request must carry (default: $DIFFCTL_SERVE_TOKEN; none: no authentication)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from diffctl.agents import load
    from diffctl.deploy.server import PolicyServer

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint {checkpoint} is not a directory (expected a saved agent)")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    torch.set_num_threads(1)
    overrides = {k: v for k, v in (("solver", args.solver), ("steps", args.steps)) if v is not None}
    if args.fused:
        overrides["fused"] = True
    agent = load(checkpoint, **overrides)
    try:
        server = PolicyServer(
            agent, args.host, args.port, max_bytes=args.max_bytes, max_connections=args.max_connections,
            token=args.token,
        ).start()  # fmt: skip
    except OSError as err:
        raise ValueError(f"cannot serve on {args.host}:{args.port}: {err.strerror or err}") from err
    print(f"serving {checkpoint} on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
