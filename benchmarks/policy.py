"""Benchmark DiffusionPolicy on CPU: act latency by backbone, sampler and NFE, and training throughput.

Shapes are maze2d's (obs 4 + goal 2, action 2, To=2, H=16, Ta=8). Latency is measured at batch 1 with one
torch thread through ``act`` over whole replanning cycles, so p50 is a queue pop and p99 the replanning tick;
``chunk_ms`` is the median time of one ``predict_chunk``. Weights are untrained: cost does not depend on them.

    python benchmarks/policy.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffctl.policies import DiffusionPolicy, SamplerConfig

OBS, GOAL, ACT, H, TO, TA = 4, 2, 2, 16, 2, 8
BACKBONES = {
    "mlp": {"hidden": 256, "depth": 3, "embed_dim": 64},
    "unet": {"down_dims": [64, 128, 256], "kernel_size": 5, "n_groups": 8, "embed_dim": 128},
    "dit": {"dim": 128, "depth": 4, "heads": 4},
}
SAMPLERS = [("ddpm", 100), ("ddim", 10), ("euler", 10), ("dpmpp_2m", 10), ("dpmpp_2m", 5), ("heun", 5)]


def nfe(solver: str, steps: int) -> int:
    return 2 * steps - 1 if solver == "heun" else steps


def make_policy(backbone: str) -> DiffusionPolicy:
    policy = DiffusionPolicy(
        OBS, ACT, goal_dim=GOAL, horizon=H, n_obs_steps=TO, n_action_steps=TA, backbone=backbone,
        backbone_kwargs=BACKBONES[backbone],
    )  # fmt: skip
    rng = np.random.default_rng(0)
    policy.fit_normalizers(rng.uniform(-2, 2, (1000, OBS)), rng.uniform(-1, 1, (1000, ACT)),
                           rng.uniform(-2, 2, (1000, GOAL)))  # fmt: skip
    return policy


def act_latency(policy: DiffusionPolicy, solver: str, steps: int, cycles: int) -> dict[str, float]:
    policy.sampler = SamplerConfig(solver=solver, steps=steps)
    policy.reset(seed=0)
    obs = np.zeros(OBS + GOAL, dtype=np.float32)
    for _ in range(TA):  # warm-up cycle
        policy.act(obs)
    times = []
    for _ in range(cycles * TA):
        start = time.perf_counter()
        policy.act(obs)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1e3
    chunk = ms.reshape(cycles, TA)[:, 0]
    return {
        "act_latency_ms_p50": float(np.percentile(ms, 50)),
        "act_latency_ms_p99": float(np.percentile(ms, 99)),
        "act_latency_ms_mean": float(ms.mean()),
        "chunk_ms": float(np.median(chunk)),
    }


def train_throughput(policy: DiffusionPolicy, batch_size: int, steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    batch = {
        "obs": torch.rand(batch_size, TO, OBS, generator=g) * 2 - 1,
        "goal": torch.rand(batch_size, GOAL, generator=g) * 2 - 1,
        "actions": torch.rand(batch_size, H, ACT, generator=g) * 2 - 1,
        "action_mask": torch.ones(batch_size, H, dtype=torch.bool),
    }
    opt = torch.optim.AdamW(policy.network.parameters(), lr=1e-4)
    policy.network.train()

    def step() -> None:
        loss, _ = policy.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - start)


def run(quick: bool) -> dict[str, Any]:
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    cycles, train_steps, batch_size = (5, 5, 256) if quick else (20, 30, 256)
    latency, training = [], []
    for backbone in BACKBONES:
        policy = make_policy(backbone)
        params = sum(p.numel() for p in policy.network.parameters())
        for solver, steps in SAMPLERS:
            row = act_latency(policy, solver, steps, cycles)
            latency.append(
                {"backbone": backbone, "solver": solver, "steps": steps, "nfe": nfe(solver, steps), **row}
            )
            print(f"{backbone:5s} {solver:9s} nfe={nfe(solver, steps):3d} chunk {row['chunk_ms']:8.2f} ms")
        sps = train_throughput(policy, batch_size, train_steps)
        training.append(
            {"backbone": backbone, "params": params, "batch_size": batch_size, "samples_per_s": sps}
        )
        print(f"{backbone:5s} train {sps:9.0f} samples/s ({params} params)")
    return {
        "benchmark": "policy",
        "command": "python benchmarks/policy.py" + (" --quick" if quick else ""),
        "setup": {
            "obs_dim": OBS,
            "goal_dim": GOAL,
            "action_dim": ACT,
            "horizon": H,
            "n_obs_steps": TO,
            "n_action_steps": TA,
            "torch_threads": 1,
            "cycles": cycles,
            "train_steps": train_steps,
            "backbones": BACKBONES,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_1min": [load_start, os.getloadavg()[0]],
        },
        "latency": latency,
        "training": training,
    }


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# DiffusionPolicy on CPU (batch 1, 1 thread)",
        "",
        f"`{result['command']}` on {result['machine']['platform']} ({result['machine']['cpu_count']} CPUs, "
        f"torch {result['machine']['torch']}). Maze2d shapes: To=2, H=16, Ta=8, goal-conditioned. "
        "1-minute load average at start/end: {:.1f}/{:.1f} (other jobs share the cores).".format(
            *result["machine"]["load_average_1min"]
        ),
        "",
        "## act latency (ms; p99 is the replanning tick, p50 a queue pop)",
        "",
        "| backbone | solver | NFE | chunk (median) | act p50 | act p99 | act mean |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["latency"]:
        lines.append(
            f"| {r['backbone']} | {r['solver']} | {r['nfe']} | {r['chunk_ms']:.2f} "
            f"| {r['act_latency_ms_p50']:.3f} | {r['act_latency_ms_p99']:.2f} "
            f"| {r['act_latency_ms_mean']:.2f} |"
        )
    lines += ["", "## training throughput (loss + backward + AdamW step)", "",
              "| backbone | params | batch | samples/s |", "|---|---:|---:|---:|"]  # fmt: skip
    for r in result["training"]:
        lines.append(f"| {r['backbone']} | {r['params']:,} | {r['batch_size']} | {r['samples_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    result = run(args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("policy.json", json.dumps(result, indent=2)), ("policy.md", to_markdown(result))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    print(to_markdown(result))


if __name__ == "__main__":
    main()
