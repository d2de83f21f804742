"""Processes and devices: joining torchrun's process group, and the few collectives the engine needs.

Every helper is a no-op in a single process, so the engine reads the same with one process or many. Rank 0
decides anything that depends on the file system (the run folder, the checkpoint to resume from) and
broadcasts it: ranks on other nodes need not see the same disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Dist", "DEVICES", "resolve_device", "is_primary_process", "setup_distributed", "broadcast_object",
           "all_reduce_sum", "all_reduce_tensor", "gather_objects", "check_in_sync"]

DEVICES = ("auto", "cpu", "cuda")  # what --device and the `device` config key accept


@dataclass
class Dist:
    """This process's place: rank, local rank (on its node), world size, and device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def primary(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | torch.device = "auto", index: int | None = None) -> torch.device:
    """"auto" (CUDA when PyTorch sees it, else the CPU), "cpu" or "cuda" (device `index` when given) as a device."""
    if isinstance(device, torch.device):
        return device
    if device not in DEVICES:
        raise ValueError(f"device must be {', '.join(DEVICES[:-1])} or {DEVICES[-1]}, not {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but PyTorch sees no CUDA device here.")
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda" if index is None else f"cuda:{index}")


def is_primary_process() -> bool:
    """Whether this process is rank 0 of torchrun's launch (or runs alone): the one that prints and writes.

    Read from the environment, so it holds before the process group is joined and after it is left."""
    return int(os.environ.get("RANK", 0)) == 0


def setup_distributed(device: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    initialised = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        initialised = True
    return Dist(rank, local_rank, world_size, dev, initialised)


def teardown_distributed(d: Dist) -> None:
    if d.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(value: Any, d: Dist) -> Any:
    """Rank 0's `value` on every rank (any picklable object; tensors arrive on the CPU)."""
    if d.world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=d.device if d.device.type == "cuda" else None)
    return box[0]


def all_reduce_sum(values: list[float], d: Dist) -> list[float]:
    """Element-wise sums of `values` over all ranks (float64 on the wire: counts stay exact)."""
    if d.world_size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_tensor(tensor: torch.Tensor, d: Dist) -> torch.Tensor:
    """The element-wise sum of `tensor` over all ranks (a new tensor; on the CPU under gloo, on the GPU under nccl)."""
    if d.world_size == 1:
        return tensor
    tensor = tensor.to(d.device, copy=True)
    dist.all_reduce(tensor)
    return tensor


def gather_objects(value: Any, d: Dist) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if d.world_size == 1:
        return [value]
    gathered = [None] * d.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def check_in_sync(module: torch.nn.Module, d: Dist, what: str = "weights") -> None:
    """Raise if the processes' copies of `module` have drifted apart (they must be bit-identical under DDP)."""
    if d.world_size == 1:
        return
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()]).to(d.device)  # (P,)
    gathered = [torch.empty_like(sums) for _ in range(d.world_size)]
    dist.all_gather(gathered, sums)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"Data-parallel processes hold different {what}: they are out of sync.")
