"""Maze2d generator benchmark: generation time, size on disk and expert score of generated datasets.

Usage: ``python benchmarks/generators.py [--full] [--task maze2d-umaze]``. Writes
``benchmarks/results/generators.json`` and ``generators.md``. ``--full`` adds D4RL's full size (1M steps
for umaze).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from diffctl.datasets.generators import generate

RESULTS = Path(__file__).resolve().parent / "results"


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(task: str, size: str, out_dir: Path) -> dict:
    out = out_dir / f"{task}-{size}.zarr"
    start = time.perf_counter()
    store = generate(task, out, seed=0, force=True, size=size, progress=False)
    seconds = time.perf_counter() - start
    card = store.attrs
    return {
        "task": task,
        "size": size,
        "steps": int(store.num_steps),
        "episodes": int(store.num_episodes),
        "seconds": round(seconds, 2),
        "rollout_seconds": card["rollout_seconds"],
        "steps_per_second": round(store.num_steps / card["rollout_seconds"]),
        "disk_mb": round(dir_size(out) / 2**20, 2),
        "expert_success_noisy": card["behaviour_policy"]["data_policy"]["success_rate"],
        "expert_return_noisy": card["behaviour_policy"]["data_policy"]["mean_return"],
        "expert_success_noiseless": card["behaviour_policy"]["noiseless_expert"]["success_rate"],
        "expert_return_noiseless": card["behaviour_policy"]["noiseless_expert"]["mean_return"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="maze2d-umaze")
    parser.add_argument("--full", action="store_true", help="also generate D4RL's full size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = ["small", "d4rl"] if args.full else ["small"]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(args.task, size, Path(tmp)) for size in sizes]
    flag = " --full" if args.full else ""
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "command": f"python benchmarks/generators.py --task {args.task}{flag}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "generators.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    cols = [
        "task",
        "size",
        "steps",
        "episodes",
        "seconds",
        "rollout_seconds",
        "steps_per_second",
        "disk_mb",
        "expert_success_noisy",
        "expert_success_noiseless",
        "expert_return_noisy",
        "expert_return_noiseless",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    text = f"# Maze2d generators\n\n`{meta['command']}` on {meta['cpus']} shared CPUs.\n\n" + "\n".join(lines)
    (RESULTS / "generators.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
