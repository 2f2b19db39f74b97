"""Process-group helpers for DDP training under `torchrun`.

`torchrun --nproc_per_node N ...` sets RANK, WORLD_SIZE and LOCAL_RANK (plus MASTER_ADDR/PORT);
`init_distributed` reads them, starts the process group (nccl on CUDA, gloo on CPU) and picks the
device. Without those variables everything runs as a single process (rank 0 of 1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """Where this process sits in the (possibly trivial) process group, and its device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when init_distributed created the process group (so it tears it down)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that logs and writes artefacts."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """Whether RANK, WORLD_SIZE and LOCAL_RANK are all set, as torchrun does."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def default_device(local_rank: int = 0) -> torch.device:
    """The CUDA device `local_rank` if CUDA is available, else the CPU."""
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def init_distributed() -> DistInfo:
    """Join (or create) the process group described by the torchrun environment, if any."""
    if dist.is_available() and dist.is_initialized():
        # Someone (a test harness, a caller) already set it up: use it, leave its lifetime to them.
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), default_device(local_rank), False)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo(device=default_device(0))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = default_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank, local_rank, world_size, device, True)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group, but only if `init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (a no-op in a single process)."""
    if info.distributed:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is left alone)."""
    value = value.detach().clone()
    if info.distributed:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def broadcast_object(obj: object, info: DistInfo, src: int = 0) -> object:
    """Rank `src`'s `obj` on every rank (picklable objects; `obj` itself in a single process)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
