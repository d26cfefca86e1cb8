"""Rank, world size and the few collectives the trainer needs; all are no-ops in a single process.

Ranks are data-parallel replicas (one per GPU, or per CPU process under gloo in tests). Every helper
here is safe to call whether or not a process group exists, so single-process code needs no branches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum of ``values`` over ranks (a new tensor, same shape; float64 on CPU for exact counts)."""
    out = values.detach().to("cpu", torch.float64).clone()
    if is_distributed():
        device = _collective_device()
        out = out.to(device)
        dist.all_reduce(out)
        out = out.cpu()
    return out


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over ranks."""
    if not is_distributed():
        return int(value)
    out = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return int(out.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (pickled; for small metadata and samples)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. an error that all must raise)."""
    return bool(all_reduce_sum(torch.tensor([float(flag)]))[0] > 0)


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo (CPU tests) reduces CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
