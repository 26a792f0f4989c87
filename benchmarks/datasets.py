"""Dataset benchmark: SequenceDataset windows/s on one core, EpisodeStore write/read, D4RL import/export.

Run: ``PYTHONPATH=. python benchmarks/datasets.py [--steps 1000000]``. Writes benchmarks/results/datasets.json
and datasets.md. The target is >= 50,000 low-dimensional windows per second on one CPU core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffctl.datasets import EpisodeStore, SequenceDataset, export_d4rl, import_d4rl

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_WINDOWS_PER_S = 50_000


def _maze_like_episodes(steps: int, episode_len: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(max(1, steps // episode_len)):
        t = episode_len
        timeouts = np.zeros(t, dtype=bool)
        timeouts[-1] = True
        out.append(
            {
                "observations": rng.normal(size=(t, 4)).astype(np.float32),
                "actions": rng.uniform(-1, 1, size=(t, 2)).astype(np.float32),
                "rewards": (rng.random(t) > 0.7).astype(np.float32),
                "terminals": np.zeros(t, dtype=bool),
                "timeouts": timeouts,
                "infos": {"goal": rng.normal(size=(t, 2)), "qpos": rng.normal(size=(t, 2))},
            }
        )
    return out


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _windows_per_s(ds: SequenceDataset, batch: int, batches: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    index_sets = [rng.integers(0, len(ds), size=batch) for _ in range(batches)]
    ds.get_batch(index_sets[0], rng=rng)
    start = time.perf_counter()
    for idx in index_sets:
        ds.get_batch(idx, rng=rng)
    return batch * batches / (time.perf_counter() - start)


def run(steps: int, batch: int, batches: int, workdir: Path) -> dict[str, Any]:
    episodes = _maze_like_episodes(steps, 300, seed=0)
    path = workdir / "bench.zarr"
    start = time.perf_counter()
    with EpisodeStore.create(path) as store:
        for ep in episodes:
            store.add_episode(ep)
    write_s = time.perf_counter() - start
    n_steps = sum(len(ep["actions"]) for ep in episodes)
    del episodes
    start = time.perf_counter()
    store = EpisodeStore.open(path)
    for key in store.keys:
        store.array(key)
    read_s = time.perf_counter() - start

    configs = {
        "diffusion_policy H16 To2 Ta8, task goal": dict(
            horizon=16, n_obs_steps=2, n_action_steps=8, goal="task"
        ),
        "diffuser H32 To1, no goal": dict(horizon=32, n_obs_steps=1, n_action_steps=1),
        "H16 To2 Ta8, hindsight goal + next_obs": dict(
            horizon=16, n_obs_steps=2, n_action_steps=8, goal="hindsight", goal_dims=[0, 1], next_obs=True
        ),
    }
    windows: dict[str, Any] = {}
    for name, kwargs in configs.items():
        start = time.perf_counter()
        ds = SequenceDataset(store, **kwargs)
        build_s = time.perf_counter() - start
        rate = _windows_per_s(ds, batch, batches, seed=1)
        windows[name] = {
            "windows": len(ds),
            "build_s": round(build_s, 3),
            "windows_per_s": round(rate),
            "meets_target": rate >= TARGET_WINDOWS_PER_S,
        }

    h5 = workdir / "bench.hdf5"
    start = time.perf_counter()
    export_d4rl(store, h5)
    export_s = time.perf_counter() - start
    start = time.perf_counter()
    import_d4rl(h5, workdir / "reimported.zarr", log=lambda msg: None)
    import_s = time.perf_counter() - start
    return {
        "steps": n_steps,
        "episodes": store.num_episodes,
        "batch_size": batch,
        "batches": batches,
        "torch_threads": torch.get_num_threads(),
        "store": {
            "write_s": round(write_s, 3),
            "read_all_keys_s": round(read_s, 3),
            "size_mb": round(_dir_mb(path), 2),
            "keys": store.keys,
        },
        "windows": windows,
        "d4rl": {
            "export_s": round(export_s, 3),
            "import_s": round(import_s, 3),
            "hdf5_mb": round(h5.stat().st_size / 1e6, 2),
        },
        "target_windows_per_s": TARGET_WINDOWS_PER_S,
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
    }


def to_markdown(result: dict[str, Any], command: str) -> str:
    lines = [
        "# Dataset benchmark",
        "",
        f"Command: `{command}` (one torch thread, batch {result['batch_size']}, "
        f"{result['batches']} batches).",
        f"Store: {result['steps']:,} steps in {result['episodes']} episodes of a maze2d-like layout "
        f"(keys {', '.join(result['store']['keys'])}).",
        "",
        "| SequenceDataset config | windows | build (s) | windows/s | >= 50k/s |",
        "|---|---:|---:|---:|:---:|",
    ]
    for name, row in result["windows"].items():
        ok = "yes" if row["meets_target"] else "no"
        lines.append(f"| {name} | {row['windows']:,} | {row['build_s']} | {row['windows_per_s']:,} | {ok} |")
    s, d = result["store"], result["d4rl"]
    lines += [
        "",
        "| operation | seconds | size (MB) |",
        "|---|---:|---:|",
        f"| EpisodeStore write (add_episode x {result['episodes']}, atomic publish) | {s['write_s']} "
        f"| {s['size_mb']} |",
        f"| EpisodeStore open + read all keys | {s['read_all_keys_s']} | |",
        f"| export D4RL HDF5 (gzip 4) | {d['export_s']} | {d['hdf5_mb']} |",
        f"| import D4RL HDF5 -> EpisodeStore | {d['import_s']} | |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    workdir = Path(tempfile.mkdtemp(prefix="diffctl-bench-"))
    try:
        result = run(args.steps, args.batch, args.batches, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = (
        f"PYTHONPATH=. taskset -c 0 python benchmarks/datasets.py --steps {args.steps} --batch {args.batch} "
        f"--batches {args.batches}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "datasets.json").write_text(json.dumps({"command": command, **result}, indent=2) + "\n")
    (args.out / "datasets.md").write_text(to_markdown(result, command))
    print(to_markdown(result, command))


if __name__ == "__main__":
    main()
