"""torch.distributed plumbing: start from torchrun's environment, who am I, shard work, reduce sums exactly.

Every command calls :func:`init_from_env` (through the CLI's ``setup``): under ``torchrun --nproc-per-node N``
(``WORLD_SIZE`` > 1) it joins the process group — gloo on CPU, nccl on CUDA with the device taken from
``LOCAL_RANK`` — and is a no-op otherwise, so a single process never pays for it.

What runs sharded:
- calibration (:func:`edgeslice.slicing.stats.collect_stats`): the calibration batches are fixed chunks of the
  calibration set (their size does not depend on the world size), rank r computes chunks r, r+W, r+2W, … and the
  per-chunk sums are combined in fixed point (:func:`to_fixed` / :func:`from_fixed`), whose integer addition is
  associative, so every world size gives the same bits as one process;
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

#: Fixed-point layout of :func:`to_fixed`: a value is hi · 2^-8 + lo · 2^-56 with int64 limbs hi, lo (resolution
#: 2^-56 ≈ 1.4e-17). Each conversion gives |hi| < 2^48 and 0 ≤ lo < 2^48, so 2^14 of them can be added before
#: :func:`carry_` must renormalise.
LIMB_BITS = 48
LIMBS = 2
FRACTION_BITS = 56
#: Largest magnitude one :func:`to_fixed` call accepts. (A calibration chunk of 100 samples reaches it only with
#: pooled activations around 10^5.)
MAX_ABS = 2.0**40
#: Additions of :func:`to_fixed` results that int64 limbs take safely between two :func:`carry_` calls.
SAFE_ADDS = 1 << 14


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
    """In-place sum over ranks (a no-op in one process). Exact for integer tensors, whatever the order."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max_(tensor: torch.Tensor) -> torch.Tensor:
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def to_fixed(x: torch.Tensor) -> torch.Tensor:
    """float64 → exact fixed-point limbs (hi, lo), (2, *x.shape) int64.

    ``x`` is truncated toward zero at 2^-56 (a fixed function of ``x``, so the same input always gives the same
    limbs); every other bit is kept exactly. Sums of limbs are plain int64 additions — associative — so any order
    or sharding of the additions gives the same integers, and :func:`from_fixed` the same float64. Elementwise: a
    value's limbs do not depend on the rest of the tensor.

    Raises:
        ValueError: |x| ≥ 2^40 or not finite (the sums would no longer fit).
    """
    x = x.to(torch.float64)
    check_fixed_range(x)
    # All exact: scaling by powers of two; hi = floor(a / 2^48) is an integer below 2^53; a − hi·2^48 is an integer
    # in [0, 2^48), representable, so the subtraction returns it exactly.
    a = torch.mul(x, 2.0**FRACTION_BITS).trunc_()
    hi = torch.mul(a, 2.0**-LIMB_BITS).floor_()
    out = torch.empty((LIMBS, *x.shape), dtype=torch.int64, device=x.device)
    out[1].copy_(hi)
    out[0].copy_(a.sub_(hi.mul_(2.0**LIMB_BITS)))
    return out


def check_fixed_range(x: torch.Tensor) -> None:
    """Raise ValueError unless every value of ``x`` is finite and below 2^40 in magnitude (see :func:`to_fixed`)."""
    if x.numel():
        lo, hi = torch.aminmax(x)
        if not bool((hi < MAX_ABS) & (lo > -MAX_ABS)):  # NaN fails too
            top = float(x.abs().max())
            raise ValueError(f"a calibration sum is not finite or exceeds 2^40 (max |x| = {top:.3g})")


def round_fixed(x: torch.Tensor) -> torch.Tensor:
    """``from_fixed(to_fixed(x))`` without the integers: x truncated toward zero at 2^-56, as float64.

    Exact: scaling by powers of two and ``trunc`` round nothing, and ``+ 0.0`` turns the -0.0 of a tiny negative
    value into the +0.0 that the integer path gives.
    """
    check_fixed_range(x)
    return torch.mul(x.to(torch.float64), 2.0**FRACTION_BITS).trunc_().mul_(2.0**-FRACTION_BITS).add_(0.0)


@torch.no_grad()
def carry_(limbs: torch.Tensor) -> torch.Tensor:
    """Renormalise summed limbs in place (lo back into [0, 2^48)); the value is unchanged."""
    limbs[1] += limbs[0] >> LIMB_BITS  # arithmetic shift: floor division, two's complement
    limbs[0] &= (1 << LIMB_BITS) - 1
    return limbs


def from_fixed(limbs: torch.Tensor, *, consume: bool = False) -> torch.Tensor:
    """Fixed-point limbs (from sums of :func:`to_fixed`) → float64, a fixed function of the integer value.

    Args:
        limbs: (2, ...) int64.
        consume: renormalise ``limbs`` in place (saves a copy of the largest tensor; its contents change).
    """
    limbs = carry_(limbs if consume else limbs.clone())
    v = limbs[1].to(torch.float64).mul_(2.0**LIMB_BITS)  # exact while |hi| < 2^53
    return v.add_(limbs[0]).mul_(2.0**-FRACTION_BITS)  # one rounding


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
