"""Data parallelism with torch.distributed: process-group setup under torchrun and gradient averaging.

Agents call their own network inside ``loss``, so instead of wrapping it in DDP the trainer averages gradients
explicitly with one all-reduce of a flat buffer per step (the loss rides along in the same buffer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group described by torchrun's environment (gloo on CPU, nccl on GPU).

    Reuses an already initialized group (tests spawn their own); without ``WORLD_SIZE > 1`` returns a
    single-process DistInfo.
    """
    if dist.is_available() and dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise ValueError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def collective_device(device: torch.device) -> torch.device:
    """Device that collectives of the current backend accept (nccl needs CUDA tensors)."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_module(module: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank so replicas start identical."""
    if not info.enabled:
        return
    with torch.no_grad():
        for value in module.state_dict().values():
            dist.broadcast(value, src=0)


def average_gradients(params: list[nn.Parameter], loss: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average gradients (missing ones count as zero) and the loss over ranks; returns the mean loss."""
    if not info.enabled:
        return loss.detach()
    pieces = [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1) for p in params]
    flat = torch.cat([*pieces, loss.detach().reshape(1).to(pieces[0].dtype if pieces else loss.dtype)])
    flat = flat.to(collective_device(flat.device))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset : offset + n].view_as(p).to(p.device)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n
    return flat[-1].to(loss.device)


def gather_tensors(value: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """Every rank's copy of an equally shaped tensor (e.g. RNG states), in rank order, on CPU."""
    if not info.enabled:
        return [value.cpu()]
    device = collective_device(value.device)
    local = value.to(device)
    out = [torch.empty_like(local) for _ in range(info.world_size)]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
