"""Data-parallel training on 2 CPU ranks (gloo): replicas stay identical and match one process on 2x batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import TinyAgent, TinyDataset, config, flat_weights
from safetensors.torch import load_file, save_file

from diffctl.train import Trainer
from diffctl.train.metrics import read_metrics

STEPS, BATCH = 12, 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        seen: list[torch.Tensor] = []
        dataset = TinyDataset()
        original = dataset.get_batch

        def get_batch(indices: torch.Tensor) -> dict[str, torch.Tensor]:
            seen.append(indices.clone())
            return original(indices)

        dataset.get_batch = get_batch  # type: ignore[method-assign]
        agent = TinyAgent(seed=rank, noise=0.0)  # different init per rank: rank 0's weights must win
        Trainer(
            agent, dataset, config(steps=STEPS, batch_size=BATCH, checkpoint_every=6), Path(out) / "run"
        ).fit()
        save_file(
            {"weights": flat_weights(agent.network), "indices": torch.cat(seen)},
            str(Path(out) / f"rank{rank}.safetensors"),
        )
    finally:
        dist.destroy_process_group()


def test_two_rank_replicas_stay_identical(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    assert torch.equal(r0["weights"], r1["weights"])
    assert not torch.equal(r0["indices"], r1["indices"])
    assert len(r0["indices"]) == STEPS * BATCH

    single = TinyAgent(seed=0, noise=0.0)
    Trainer(single, TinyDataset(), config(steps=STEPS, batch_size=2 * BATCH), tmp_path / "single").fit()
    assert torch.allclose(flat_weights(single.network), r0["weights"], atol=1e-5)

    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # one writer
    assert records[-1]["samples_per_s"] > 0
    assert (tmp_path / "run" / "checkpoints" / "step_0000012" / "trainer_state.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_cli_two_ranks_share_one_run(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m diffctl.cli train ...`: one run directory, one metrics writer."""
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(_free_port()), "-m", "diffctl.cli", "train",
        "policy=diffusion_mlp", "policy.backbone_kwargs.hidden=32",
        "training.steps=6", "training.batch_size=8", "training.warmup_steps=1", "training.checkpoint_every=3",
        "training.progress=false", "training.log_every=1", "eval.episodes=0", f"run_dir={run}",
        f"task.dataset.path={tmp_path / 'umaze.zarr'}", "task.dataset.generate.episodes=2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1
    records = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 7))
    assert (
        json.loads((run / "checkpoints" / "step_0000006" / "trainer_state.json").read_text())["world_size"]
        == 2
    )
