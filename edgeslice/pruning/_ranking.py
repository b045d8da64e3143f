"""Deterministic top-k selection and integer apportionment shared by the pruners.

Tie rule used everywhere in :mod:`edgeslice.pruning`: among equal scores, the weight that comes first wins, where
"first" means the earlier layer in ``model.named_modules()`` order, then the lower index in ``weight.flatten()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def keep_top_k(scores: Sequence[Tensor], masks: Sequence[Tensor], k: int) -> list[Tensor]:
    """Keeps the ``k`` highest-scored surviving entries across several tensors.

    Only entries where ``masks`` is True compete; everything else stays pruned. Ties are broken by position
    (earlier tensor, then lower flat index, is kept), so the result is deterministic and keeps exactly ``k``.

    Args:
        scores: One score tensor per layer (any shape).
        masks: Boolean masks of the surviving entries, same shapes as ``scores``.
        k: Number of entries to keep in total; at most the number of surviving entries.

    Returns:
        New boolean masks, same shapes as ``scores``, each a subset of the corresponding input mask.

    Raises:
        ValueError: If ``k`` is negative or larger than the number of surviving entries.
    """
    flat_masks = [m.reshape(-1).bool() for m in masks]
    n_survivors = sum(int(m.sum()) for m in flat_masks)
    if not 0 <= k <= n_survivors:
        raise ValueError(f"cannot keep {k} entries out of {n_survivors} surviving ones")
    if not scores:
        return []
    device = flat_masks[0].device
    alive = torch.cat([m.to(device) for m in flat_masks])  # (n_entries,) over all tensors, in (tensor, index) order
    values = torch.cat([s.reshape(-1).to(device=device, dtype=torch.float64) for s in scores])
    values = torch.where(alive, values, -torch.inf)  # pruned entries rank last; k <= n_survivors never reaches them
    # A stable descending sort keeps the (tensor, flat index) order among equal scores: the earlier entry wins.
    chosen = torch.sort(values, descending=True, stable=True).indices[:k]
    keep = torch.zeros_like(alive)
    keep[chosen] = True
    sizes = [m.numel() for m in flat_masks]
    return [
        part.reshape(score.shape).to(mask.device)
        for part, score, mask in zip(keep.split(sizes), scores, masks, strict=True)
    ]


def apportion(targets: Sequence[float], caps: Sequence[int], total: int) -> list[int]:
    """Rounds real per-layer keep counts to integers that sum exactly to ``total`` (largest-remainder method).

    Each count starts at ``floor(target)`` (at most its cap); the missing units go to the layers with the largest
    fractional parts, ties to the earlier layer, never past a layer's cap.

    Args:
        targets: Real-valued number of weights to keep per layer; should sum to ``total``.
        caps: Maximum integer count per layer (its surviving weights).
        total: Exact integer sum wanted.

    Returns:
        Integer counts, one per layer, with ``0 <= count <= cap`` and ``sum(counts) == total``.

    Raises:
        ValueError: If ``total`` is negative or exceeds ``sum(caps)``.
    """
    if not 0 <= total <= sum(caps):
        raise ValueError(f"cannot apportion {total} weights over layers holding {sum(caps)}")
    counts = [max(0, min(int(math.floor(t)), cap)) for t, cap in zip(targets, caps, strict=True)]
    while sum(counts) > total:  # only reachable through floating-point error in ``targets``
        i = max((j for j in range(len(counts)) if counts[j] > 0), key=lambda j: (counts[j] - targets[j], -j))
        counts[i] -= 1
    missing = total - sum(counts)
    while missing > 0:
        open_layers = [i for i in range(len(counts)) if counts[i] < caps[i]]
        open_layers.sort(key=lambda i: (-(targets[i] - counts[i]), i))
        for i in open_layers[:missing]:
            counts[i] += 1
        missing = total - sum(counts)
    return counts
