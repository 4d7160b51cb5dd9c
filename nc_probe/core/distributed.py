"""torch.distributed plumbing: start the process group that ``torchrun`` describes, know who we are, split rows.

nc-probe never pads a shard: rank r of W gets rows ``[r*N//W, (r+1)*N//W)`` (feature files) or the indices
``r, r+W, r+2W, ...`` (datasets), so every sample counts exactly once. Statistics are combined with
``ClassStats.all_reduce`` and integer all-reduces, so a K-process run gives the single-process report.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Generator
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist


class Syncable(Protocol):
    def sync_steps(self) -> Generator[tuple[str, Any], Any, None]: ...


T = TypeVar("T", bound=Syncable)

# A rank that dies makes torchrun stop the others; the timeout only guards runs started by other launchers.
TIMEOUT = datetime.timedelta(minutes=10)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str = "auto") -> bool:
    """Join the process group that torchrun's environment (WORLD_SIZE > 1) describes; True when distributed.

    NCCL when this rank will compute on a GPU, gloo otherwise. Each rank takes GPU ``LOCAL_RANK``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or str(device).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=TIMEOUT)
    return True


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def leave(started: bool) -> None:
    """Leave the process group this process ``started`` (after a run that succeeded on every rank): a barrier, then
    ``destroy_process_group``, so the ranks tear down together. A rank that exited while its peer was still tearing
    down was aborted by gloo ("terminate called without an active exception") in 3 of 20 two-rank runs of a Hugging
    Face Trainer (with the barrier, still 1 of 6 runs of a test after the Trainer: rarer, not gone; the abort is at
    interpreter exit, after the run's outputs are written); after a failure nothing is awaited (the peer may be
    gone: a barrier would hang)."""
    if started and initialized():
        dist.barrier()
        dist.destroy_process_group()


def comm_device() -> torch.device:
    """Where tensors must live for collectives of the current backend."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def row_range(n: int) -> tuple[int, int]:
    """This rank's contiguous block of ``n`` rows."""
    r, w = rank(), world_size()
    return r * n // w, (r + 1) * n // w


def all_reduce_max(value: int) -> int:
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.long, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_reduce_(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (moving it through the backend's device when needed)."""
    if not active():
        return tensor
    dev = comm_device()
    if tensor.device == dev:
        dist.all_reduce(tensor, group=group)
        return tensor
    moved = tensor.to(dev)
    dist.all_reduce(moved, group=group)
    tensor.copy_(moved.to(tensor.device))
    return tensor


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (on every rank)."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sync(obj: T, group=None) -> T:
    """Combine an object's state across ranks, in place; the one mechanism of every cross-process merge.

    ``obj.sync_steps()`` is a generator that yields requests and receives their results: ``("sum", tensors)``
    sums the tensors over ranks in place and sends them back; ``("gather", value)`` sends back every rank's value,
    in rank order. ClassStats (re-centred Chan merges), PredictionTally (integer counts) and the PCA sample (rows
    gathered) all merge this way. In one process nothing is exchanged.
    """
    if not active():
        return obj
    steps = obj.sync_steps()
    request = next(steps, None)
    while request is not None:
        kind, payload = request
        if kind == "sum":
            result = [all_reduce_(t, group) for t in payload]
        elif kind == "gather":
            result = gather_objects(payload)
        else:  # pragma: no cover - a programming error
            raise ValueError(f"unknown sync request {kind!r}")
        try:
            request = steps.send(result)
        except StopIteration:
            request = None
    return obj
