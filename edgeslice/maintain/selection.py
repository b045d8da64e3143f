"""Channel sets for the maintenance baselines: size-matched global/category slices and DeepArc's layer sets.

The paper compares NeuSemSlice with global and category-wise slicing "with similar slice sizes" (§5.3, footnote 3)
and with DeepArc (Ren et al., ICSE 2023), which trains whole layers: the non-redundant ones for re-adaptation, only
the redundant ones for incremental development (§5.4–5.5).

DeepArc here reuses :mod:`edgeslice.studies.deeparc`'s block similarities (centered linear CKA of each block's
output with its input over a calibration sample). For *training* nothing is removed, so the shape restriction of
:func:`edgeslice.studies.deeparc.deeparc` does not apply: a block is redundant when its CKA reaches ``threshold``,
whatever its shapes. Layers outside every block (stem, head conv) and a first block that reads the raw input (DeepArc
compares consecutive layers; the MLP's ``fc1``) are never redundant.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..slicing.slicer import SemanticSlicer, SliceResult


def matched_slice(slicer: SemanticSlicer, strategy: str, target: int, *, iterations: int = 30) -> SliceResult:
    """The ``global``/``category`` slice whose total critical-channel count is closest to ``target``.

    The per-layer kept ratio is found by bisection (category slices grow with the ratio through the union over
    classes, so the ratio is not simply target / total).
    """
    total = sum(la.channels for la in slicer.layers)
    lo, hi = 1e-6, 1.0
    best: SliceResult | None = None
    for _ in range(iterations):
        mid = (lo + hi) / 2
        result = slicer.slice(strategy=strategy, ratio=mid)
        if best is None or abs(result.kept_channels - target) < abs(best.kept_channels - target):
            best = result
        if result.kept_channels == target:
            break
        if result.kept_channels < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 0.5 / total:
            break
    assert best is not None
    return best


def deeparc_blocks(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    threshold: float,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
    max_samples: int = 500,
) -> tuple[list[str], list[dict[str, Any]]]:
    """DeepArc's redundant blocks for training purposes: CKA(input, output) ≥ ``threshold``; the classifier never.

    Returns:
        (redundant block names, per-block similarity rows).
    """
    from ..studies.deeparc import block_similarities, find_blocks
    from ..torchutil import classifier_names

    heads = classifier_names(model)
    blocks = [b for b in find_blocks(model) if b not in heads]
    rows = block_similarities(model, blocks, batches, prepare=prepare, device=device, max_samples=max_samples)
    # DeepArc compares consecutive *layers*: a block that reads the raw input has no predecessor to be redundant with.
    first = next((n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))), "")
    for r in rows:
        r["eligible"] = not (first == r["block"] or first.startswith(r["block"] + "."))
    redundant = [r["block"] for r in rows if r["eligible"] and r["params"] > 0 and r["cka"] >= threshold]
    return redundant, rows


def in_blocks(layers: Iterable[Any], blocks: Iterable[str]) -> dict[str, torch.Tensor]:
    """layer → (channels,) bool, all True when the layer lies inside one of ``blocks``."""
    prefixes = tuple(f"{b}." for b in blocks)
    names = set(blocks)
    out = {}
    for la in layers:
        name, channels = (la["name"], int(la["channels"])) if isinstance(la, dict) else (la.name, la.channels)
        inside = name in names or name.startswith(prefixes)
        out[name] = torch.full((channels,), inside, dtype=torch.bool)
    return out


def share(sets: dict[str, torch.Tensor]) -> float:
    """Share of channels marked True."""
    total = sum(m.numel() for m in sets.values())
    return sum(int(m.sum()) for m in sets.values()) / max(total, 1)
