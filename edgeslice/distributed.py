"""torch.distributed plumbing: start from torchrun's environment, who am I, shard work, reduce sums exactly.

Every command calls :func:`init_from_env` (through the CLI's ``setup``): under ``torchrun --nproc-per-node N``
(``WORLD_SIZE`` > 1) it joins the process group — gloo on CPU, nccl on CUDA with the device taken from
``LOCAL_RANK`` — and is a no-op otherwise, so a single process never pays for it.

What runs sharded:
- calibration (:func:`edgeslice.slicing.stats.collect_stats`): sharded by samples — the calibration batches are
  fixed chunks (their size does not depend on the world size) and rank r computes chunks r, r+W, r+2W, … — then
  each sample's feature rows go point-to-point to the rank that owns its class (c mod W);
- the semantic solve (:class:`edgeslice.slicing.SemanticSlicer`): sharded by classes, each rank forms the Gram
  matrices of its own classes from their rows; per-class sums and similarity curves are combined with
  :func:`all_reduce_sum_` over tensors whose entries are non-zero on one rank only, which is exact, so every world
  size gives the same bits as one process;
- fine-tuning (:func:`edgeslice.train.train_model`, :func:`edgeslice.ondevice.loop.train_partial`):
  DistributedDataParallel over round-robin shards of the batch stream (:func:`shard_batches`).

Artifacts and console output come from rank 0 only (:func:`is_main`; :mod:`edgeslice.artifacts.files` and
:mod:`edgeslice._progress` consult it).

Only torch and the standard library are imported: the on-device loop uses this module.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_initialized() -> bool:
    """Whether this process is part of a started process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """Rank on this node: torchrun's ``LOCAL_RANK`` (0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on the process that writes artifacts and prints (rank 0, or the only process)."""
    return rank() == 0


def init_from_env(device: torch.device | None = None, *, timeout_s: float = 1800.0) -> torch.device | None:
    """Join the process group torchrun describes in the environment; a no-op unless ``WORLD_SIZE`` > 1.

    Args:
        device: the device the command resolved (``cpu`` → gloo; ``cuda`` → nccl, bound to ``cuda:LOCAL_RANK``).
        timeout_s: collective timeout.

    Returns:
        The device this rank should use (``cuda:LOCAL_RANK`` under nccl, else ``device`` unchanged).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = device is not None and device.type == "cuda"
    if cuda:
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": device} if cuda else {}),
        )
        atexit.register(cleanup)
    return device


def cleanup() -> None:
    """Leave the process group (idempotent)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def shard_indices(n: int, *, world: int | None = None, rank_: int | None = None) -> range:
    """The positions 0..n-1 this rank owns in a round-robin split: r, r+W, r+2W, …

    Round robin by position keeps shards within one item of each other and makes ownership a function of the
    position alone, independent of how the items are computed.
    """
    w = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    if not 0 <= r < w:
        raise ValueError(f"rank {r} outside a world of {w}")
    return range(r, n, w)


def shard_stream(items: Iterable[T], *, world: int | None = None, rank_: int | None = None) -> Iterator[T]:
    """Round-robin shard of a stream: the items at positions r, r+W, … (the others are read and skipped)."""
    w = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    for i, item in enumerate(items):
        if i % w == r:
            yield item


def shard_batches(batches: Iterable[T], *, world: int | None = None, rank_: int | None = None) -> Iterator[T]:
    """Like :func:`shard_stream`, but every rank gets the same number of items (``ceil(n / W)``): the short ranks
    repeat the stream's first items, as ``DistributedSampler`` pads its shards. DDP needs equal step counts."""
    w = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    head: list[T] = []
    n = 0
    for i, item in enumerate(batches):
        if i < w:
            head.append(item)
        if i % w == r:
            yield item
        n = i + 1
    if n and n % w and r >= n % w:
        yield head[(r - n % w) % len(head)]


def sharded_steps(n_batches: int, world: int | None = None) -> int:
    """Steps each rank takes over ``n_batches`` with :func:`shard_batches`."""
    w = world_size() if world is None else world
    return -(-n_batches // w)


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (a no-op in one process). Exact for integer tensors, whatever the order, and for
    float tensors whose every entry is non-zero on at most one rank. A CPU tensor under nccl travels through this
    rank's GPU."""
    if is_initialized() and world_size() > 1:
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            staged = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(staged, op=dist.ReduceOp.SUM)
            tensor.copy_(staged)
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` inside DistributedDataParallel when distributed (else ``model`` itself).

    Call after choosing which parameters train (``requires_grad``): DDP registers the trainable ones when built.
    """
    if world_size() <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


@torch.no_grad()
def broadcast_module_(model: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (after DDP training: BatchNorm running statistics were
    updated from each rank's own batches and DDP only re-broadcasts them at the next forward)."""
    if world_size() <= 1:
        return
    for t in [*model.parameters(), *model.buffers()]:
        dist.broadcast(t.data, src=0)
