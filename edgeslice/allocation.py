"""Per-layer widths chosen apart from which channels fill them.

A semantic slice decides two things at once: *how many* channels each layer keeps (the fewest whose CKA to the layer
reaches θ, per class) and *which* (the top-ranked by the contribution metric). This module separates them, so each
can be set by a different rule and the two compared at equal size:

- :func:`entry_thresholds` turns a slicer's similarity curves into one number per channel: the smallest θ at which
  the channel becomes critical. ``critical(θ) = entry < θ`` reproduces :meth:`SemanticSlicer.slice` exactly, for
  every θ, so the entry threshold is the semantic ranking of a layer's channels, with no θ fixed.
- :func:`keep_at_widths` fills given per-group widths (e.g. the widths another pruner reached) with the best-ranked
  channels of each torch-pruning group, for :func:`~edgeslice.restructure.restructure_`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import nn

from .restructure import GroupChannels, RestructureReport
from .slicing.observe import Layer
from .slicing.slicer import SemanticSlicer
from .torchutil import classifier_names


def entry_thresholds(slicer: SemanticSlicer) -> dict[str, torch.Tensor]:
    """layer → (N,) float64: the smallest θ above which each channel is critical (min over classes).

    For class c with channel order π_c and running maximum R_c of its prefix similarities, the channel at position
    p of π_c is in c's set at θ iff p = 0 or R_c[p−1] < θ (Algorithm 1's first hit). Its entry is therefore R_c[p−1]
    (−1 for p = 0: every θ keeps it), and the union over classes keeps it iff min_c entry < θ. Channels of no class
    (every class absent from the calibration set) get +inf.
    """
    out = {}
    for name, per_class in slicer.curves().items():
        n = next((len(order) for order, _ in per_class), 0)
        entry = torch.full((n,), float("inf"), dtype=torch.float64)
        for order, sim in per_class:
            if sim is None:
                continue
            running = torch.cummax(sim, 0).values
            e = torch.empty(n, dtype=torch.float64)
            e[order] = torch.cat([torch.tensor([-1.0], dtype=torch.float64), running[:-1]])
            entry = torch.minimum(entry, e)
        out[name] = entry
    return out


def semantic_rank(slicer: SemanticSlicer, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """layer → (N,) float64, higher = more critical: by entry threshold, ties broken by the global ``scores``."""
    out = {}
    for name, entry in entry_thresholds(slicer).items():
        n = len(entry)
        by_score = torch.sort(-scores[name].to(torch.float64), stable=True).indices
        order = by_score[torch.sort(entry[by_score], stable=True).indices]
        rank = torch.empty(n, dtype=torch.float64)
        rank[order] = torch.arange(n, 0, -1, dtype=torch.float64)
        out[name] = rank
    return out


PositionScore = Callable[[object, list[tuple[str, list[int], list[int]]], int], torch.Tensor]


def rank_scores(rank: dict[str, torch.Tensor]) -> PositionScore:
    """A group's position scores from per-layer ranks: the best rank any member gives the position."""

    def score(group, items, size: int) -> torch.Tensor:
        best = torch.full((size,), float("-inf"), dtype=torch.float64)
        for name, idxs, root_idxs in items:
            ri = torch.as_tensor(root_idxs, dtype=torch.long) % size
            best.scatter_reduce_(0, ri, rank[name].to(torch.float64)[torch.as_tensor(idxs, dtype=torch.long)], "amax")
        return best

    return score


@dataclass
class _Slots:
    """One torch-pruning group's positions, best first (a position repeats in every chunk of a grouped conv)."""

    channels: int
    chunks: int
    items: list[tuple[str, torch.Tensor, torch.Tensor]]  # (layer, its channel indices, their root positions)
    order: torch.Tensor


def group_slots(
    model: nn.Module, layers: list[Layer], example: torch.Tensor, position_score: PositionScore
) -> dict[str, _Slots]:
    """root → its group's positions ranked by ``position_score``, for every group that may lose channels (traced
    once; :func:`masks_at` then gives the keep masks of any widths without tracing again).

    Which groups may lose channels, and through which items, is the restructure's own answer
    (:func:`~edgeslice.restructure.sliced_groups`): a group it keeps whole (attention, cross-channel norms) has no
    slots, so every width rule leaves its channels alone, as the restructure would.
    """
    from .restructure import sliced_groups

    return _slots(sliced_groups(model, layers, example)[1], position_score)


def _slots(groups: list[GroupChannels], position_score: PositionScore) -> dict[str, _Slots]:
    out = {}
    for gc in groups:
        if not gc.removable:
            continue
        scores = position_score(gc.group, gc.items, gc.size)
        out[gc.root] = _Slots(
            gc.channels,
            gc.chunks,
            [
                (n, torch.as_tensor(i, dtype=torch.long), torch.as_tensor(r, dtype=torch.long) % gc.size)
                for n, i, r in gc.items
            ],
            torch.sort(-scores, stable=True).indices,
        )
    return out


def fixed_roots(model: nn.Module, layers: list[Layer], example: torch.Tensor) -> list[str]:
    """Roots of the groups the restructure never narrows (kept whole, or without a sliced layer): what a
    torch-pruning pruner must leave alone for its widths to be ones the restructure can reach."""
    from .restructure import sliced_groups

    _, groups = sliced_groups(model, layers, example)
    return [gc.root for gc in groups if not gc.removable]


def masks_at(slots: dict[str, _Slots], layers: list[Layer], widths: dict[str, int]) -> dict[str, torch.Tensor]:
    """Keep masks with ``widths[root]`` channels in every group of ``slots`` (groups not named keep all)."""
    keep = {la.name: torch.ones(la.channels, dtype=torch.bool) for la in layers}
    for root, slot in slots.items():
        if root not in widths:
            continue
        size = len(slot.order)
        top = torch.zeros(size, dtype=torch.bool)
        top[slot.order[: min(size, max(1, -(-int(widths[root]) // slot.chunks)))]] = True
        for name, idxs, positions in slot.items:
            keep[name][idxs] = top[positions]
    return keep


def keep_at_widths(
    model: nn.Module,
    layers: list[Layer],
    example: torch.Tensor,
    widths: dict[str, int],
    position_score: PositionScore,
) -> dict[str, torch.Tensor]:
    """Keep masks with exactly ``widths[root]`` channels in every torch-pruning group (best positions first).

    Args:
        model: the dense model (unchanged).
        layers: its sliceable layers.
        example: an input batch for tracing.
        widths: group root (the conv that roots a torch-pruning group) → channels to keep; groups not named keep all.
        position_score: (group, its sliced out-channel items, positions) → (positions,) scores, higher kept first.

    Returns:
        layer → (N,) bool, for :func:`~edgeslice.restructure.restructure_` (every member of a group keeps the same
        positions, so coupling adds nothing).
    """
    return masks_at(group_slots(model, layers, example, position_score), layers, widths)


def group_widths(model: nn.Module, roots: list[str]) -> dict[str, int]:
    """root name → its current output channels in ``model`` (e.g. a pruned copy of the same architecture)."""
    modules = dict(model.named_modules())
    out = {}
    for r in roots:
        m = modules.get(r)
        if isinstance(m, nn.Conv2d):
            out[r] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[r] = m.out_features
    return out


def cap_widths(
    model: nn.Module,
    layers: list[Layer],
    example: torch.Tensor,
    target_params: int,
    position_score: PositionScore,
    *,
    round_to: int = 8,
) -> tuple[dict[str, int], dict[str, torch.Tensor]]:
    """One width cap K for every group (``min(N_g, K)`` channels, K a multiple of ``round_to``), the largest whose
    restructured model has at most ``target_params`` parameters (bisected); channels by ``position_score``.

    Returns:
        (widths, keep masks for :func:`~edgeslice.restructure.restructure_`).
    """
    from .restructure import plan_restructure, restructured_params, sliced_groups

    traced = sliced_groups(model, layers, example)  # once: every cap below plans on the same groups
    slots = _slots(traced[1], position_score)
    if not slots:  # nothing torch-pruning can narrow: every channel stays
        return {}, {la.name: torch.ones(la.channels, dtype=torch.bool) for la in layers}
    step = max(1, round_to)

    def at(k: int) -> tuple[dict[str, int], dict[str, torch.Tensor], int]:
        widths = {r: min(slot.channels, k) for r, slot in slots.items()}
        keep = masks_at(slots, layers, widths)
        _, plans, _ = plan_restructure(model, layers, keep, example, round_to=round_to, traced=traced)
        return widths, keep, restructured_params(model, plans, example)

    lo, hi = 1, max(1, -(-max(slot.channels for slot in slots.values()) // step))  # caps in units of step
    best = at(lo * step)
    if best[2] > target_params:
        return best[0], best[1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        cand = at(mid * step)
        if cand[2] <= target_params:
            lo, best = mid, cand
        else:
            hi = mid - 1
    return best[0], best[1]


#: How the restructure sets each group's width: ``theta`` (the θ slice's own critical channels, the paper's rule),
#: ``cap`` (one cap on every group's width) or ``lamp`` (the widths Torch-Pruning's LAMP reaches); with ``cap`` and
#: ``lamp`` the θ slice still sets the parameter budget and the semantic rank still picks the channels.
WIDTH_RULES = ("theta", "cap", "lamp")


def tp_pruned(
    dense: nn.Module,
    example: torch.Tensor,
    importance: object,
    ratio: float,
    *,
    global_pruning: bool,
    round_to: int,
    before_step: Callable[[nn.Module], None] | None = None,
    fixed: Collection[str] = (),
) -> nn.Module:
    """A copy of ``dense`` pruned by Torch-Pruning's ``MetaPruner`` at ``ratio`` (the classifier kept, and every
    group rooted at a layer named in ``fixed``, e.g. :func:`fixed_roots`)."""
    import copy

    import torch_pruning as tp

    model = copy.deepcopy(dense).eval()
    heads = {*classifier_names(model), *fixed}
    ignored = [m for n, m in model.named_modules() if n in heads and isinstance(m, (nn.Linear, nn.Conv2d))]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=importance,
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        round_to=round_to,
        ignored_layers=ignored,
    )
    if before_step is not None:
        before_step(model)
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def bisect_ratio(
    target: int, prune_at: Callable[[float], nn.Module], *, tolerance: float = 0.01, steps: int = 24
) -> tuple[nn.Module, float]:
    """The ratio whose pruned parameter count is within ``tolerance`` of ``target`` (or the closest tried)."""
    from .models import count_parameters

    lo, hi = 0.0, 0.99
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        model = prune_at(mid)
        params = count_parameters(model)
        if best is None or abs(params - target) < abs(best[2] - target):
            best = (model, mid, params)
        if abs(params - target) <= tolerance * target:
            break
        lo, hi = (mid, hi) if params > target else (lo, mid)
    return best[0], best[1]


def allocate_keep(
    rule: str,
    model: nn.Module,
    slicer: SemanticSlicer,
    result: object,
    example: torch.Tensor,
    *,
    round_to: int = 8,
) -> dict[str, torch.Tensor]:
    """Keep masks for the restructure under width ``rule`` (see :data:`WIDTH_RULES`), at the θ slice's size.

    Args:
        rule: ``theta`` returns the slice's critical channels unchanged.
        model: the dense model (unchanged).
        slicer: the calibrated slicer the ``semantic`` ``result`` came from.
        result: its :class:`~edgeslice.slicing.SliceResult`.
        example: an input batch for tracing (on the model's device).
        round_to: the restructure's channel multiple.
    """
    import copy

    from .models import count_parameters
    from .restructure import restructure_

    if rule not in WIDTH_RULES:
        raise ValueError(f"unknown width rule {rule!r}; valid: {', '.join(WIDTH_RULES)}")
    if rule == "theta":
        return result.critical
    if result.params.get("strategy") != "semantic":
        raise ValueError(f"--widths {rule} needs the semantic strategy (it ranks channels by their entry θ)")
    probe = copy.deepcopy(model)
    restructure_(probe, slicer.layers, result.critical, example, scores=result.scores, round_to=round_to)
    target = count_parameters(probe)
    del probe
    semantic = rank_scores(semantic_rank(slicer, result.scores))
    if rule == "cap":
        return cap_widths(model, slicer.layers, example, target, semantic, round_to=round_to)[1]
    import torch_pruning as tp

    fixed = fixed_roots(model, slicer.layers, example)  # LAMP may only narrow what the restructure can
    lamp, _ = bisect_ratio(
        target,
        lambda r: tp_pruned(
            model, example, tp.importance.LAMPImportance(p=2), r, global_pruning=True, round_to=round_to, fixed=fixed
        ),
    )
    roots = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return keep_at_widths(model, slicer.layers, example, group_widths(lamp, roots), semantic)


def check_allocatable(
    model: nn.Module, example_inputs: torch.Tensor, rule: str, *, theta: float, round_to: int, seed: int = 0
) -> RestructureReport:
    """Refuse, in one line, a model whose widths ``rule`` cannot be allocated and restructured.

    On a perturbed copy (:func:`~edgeslice.restructure.perturbed_copy`): calibrate on a few random images of two
    classes (the ``avg`` metric: the structure is checked here, not the scores), slice at ``theta``, allocate the
    widths by ``rule`` (:func:`allocate_keep`), restructure and compare with the masked copy, as the pipeline does
    after training. Seconds at 32 px, so run it before training.

    Returns:
        The perturbed copy's restructure report.

    Raises:
        ModelError: naming the rule and what failed.
    """
    import copy

    from .errors import ModelError
    from .restructure import perturbed_copy, restructure_

    x = example_inputs[:2]
    what = f"cannot allocate --widths {rule} for {type(model).__name__}"
    try:
        twin = perturbed_copy(model, seed)
        g = torch.Generator().manual_seed(seed)
        calib = torch.randn(8, *x.shape[1:], generator=g)  # (8, C, H, W): 4 images of each of 2 classes
        slicer = SemanticSlicer(twin, x[:1], metric="avg")
        slicer.calibrate([(calib, torch.arange(8) % 2)], num_classes=2)
        result = slicer.slice(theta=theta)
        keep = allocate_keep(rule, twin, slicer, result, x, round_to=round_to)
        pruned = copy.deepcopy(twin)
        report = restructure_(pruned, slicer.layers, keep, x, scores=result.scores, round_to=round_to)
        with torch.no_grad(), report.masked(twin, slicer.layers):
            masked = twin(x)
        with torch.no_grad():
            diff = float((masked - pruned.eval()(x)).abs().max()) / max(1.0, float(masked.abs().max()))
    except ModelError:
        raise
    except Exception as e:  # a group the width rule does not handle: say so before any training
        message = str(e).splitlines()[0] if str(e) else ""
        raise ModelError(f"{what}: {type(e).__name__}: {message}") from None
    if diff > 1e-3:  # the pipeline's own guard
        raise ModelError(f"{what}: the restructured model differs from the masked one (relative {diff:.2g})")
    return report
