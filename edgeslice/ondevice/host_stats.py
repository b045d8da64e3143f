"""Host side: the class statistics an index carries, computed once at slicing time on the workstation.

The statistics (:mod:`edgeslice.classstats`) are taken on a seeded per-class sample of the training data, on a
copy of the model isolated on the index's critical channels exactly as an increment will isolate it
(:func:`~edgeslice.ondevice.isolate.isolate_`), and held-out images decide which scorer the routed head uses for
the sliced classes. This reads data sets (:mod:`edgeslice.data`, :mod:`edgeslice.train`): the device never runs it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..classstats import DEFAULT_BUDGET, ClassStats, choose_taps, class_stats, router_features
from ..data import calibration_indices, normalize
from ..errors import EdgesliceError, IndexFileError
from ..train import iterate_batches
from .freeze import channel_groups, classifier_modules
from .isolate import frozen_classifier_inputs, isolate_

#: Images per class the statistics are computed on at slicing time (more than the slicer's calibration sample: a
#: covariance over ~1,000 features needs them).
STATS_PER_CLASS = 500


def stats_for_index(
    model: nn.Module,
    meta: Any,
    dataset: Any,
    *,
    per_class: int = STATS_PER_CLASS,
    seed: int = 0,
    device="cpu",
    budget: int = DEFAULT_BUDGET,
    index: Any = None,
) -> ClassStats:
    """Statistics of the model's classes on a seeded per-class sample of ``dataset`` (labels = the model's).

    With ``index``, the statistics are taken on a copy of the model isolated on the index's critical channels
    (:func:`~edgeslice.ondevice.isolate.isolate_`, exactly as an increment will isolate it), over the classifier
    inputs that the frozen sub-network computes and the taps :func:`choose_taps` picks: ``isolated=True``. When the
    model cannot be isolated, or without ``index``, they are over all classifier inputs of the model as it is
    (``isolated=False``: the ``lda`` head only).
    """
    sample = Subset(dataset, calibration_indices(dataset, per_class, seed))
    mean, std = tuple(meta.mean), tuple(meta.std)

    def prepare(x):
        return normalize(x, mean, std)

    net, dims, isolated, taps = model, None, False, []
    if index is not None:
        example = prepare(next(iterate_batches(sample, 2))[0].to(device))
        found = isolated_features(model, index, len(meta.classes), example)
        if found is not None:
            net, dims, report = found
            isolated = True
            taps = choose_taps(
                report,
                index.layers,
                dims,
                len(meta.classes),
                budget,
                exclude=_classifier_producers(net, report),
            )
    stats = class_stats(
        net,
        iterate_batches(sample, 200),
        list(meta.classes),
        dims=dims,
        prepare=prepare,
        device=device,
        budget=budget,
        isolated=isolated,
        taps=taps,
    )
    if isolated:
        # Held-out images (another seeded draw) decide what scores these classes within their task later.
        held = Subset(dataset, calibration_indices(dataset, SCORER_PER_CLASS, seed + 1))
        acc = _scorer_accuracy(net, stats, iterate_batches(held, 200), prepare, device)
        stats.scorer_accuracy = acc
        stats.old_scorer = "lda" if acc["lda"] > acc["rows"] else "rows"
    return stats


#: Held-out images per class on which the isolated rows and the discriminant are compared at slicing time.
SCORER_PER_CLASS = 200


@torch.no_grad()
def _scorer_accuracy(net: nn.Module, stats: ClassStats, batches, prepare, device) -> dict[str, float]:
    """Accuracy (percent) of the isolated classifier rows and of the discriminant over the statistics' classes."""
    w, b = stats.head()
    hits = {"rows": 0, "lda": 0}
    n = 0
    for x, y in batches:
        f, r = router_features(net, prepare(x.to(device)), stats.dims, stats.taps)
        y = y.to(f.device)
        hits["rows"] += int((net.get_classifier()(f).argmax(1) == y).sum())
        z = r @ w.to(f.device).T + b.to(f.device)
        hits["lda"] += int((z.argmax(1) == y).sum())
        n += len(y)
    return {k: round(100.0 * v / max(n, 1), 2) for k, v in hits.items()}


def isolated_features(
    model: nn.Module, index: Any, old_rows: int, example: torch.Tensor, *, seed: int = 0
) -> tuple[nn.Module, torch.Tensor, Any] | None:
    """(isolated copy of ``model``, its frozen classifier inputs, the isolation report), or None when the model
    cannot be isolated."""
    net = copy.deepcopy(model)
    try:
        groups = channel_groups(net, index.layers, example)
        report = isolate_(net, groups, index.critical, old_rows, example, seed=seed)
    except (EdgesliceError, ValueError, RuntimeError):
        return None
    dims = frozen_classifier_inputs(net, report)
    if dims is None or not dims.any():
        return None
    return net.eval(), dims, report


def _classifier_producers(model: nn.Module, report: Any) -> list[str]:
    return [p for h in classifier_modules(model) for p in report.producers.get(h, [])]


def attach_class_stats(index: Any, model: nn.Module, meta: Any, dataset: Any, *, seed: int = 0, device="cpu") -> None:
    """Give ``index`` the statistics of its classes when they fit the budget (else record why not in its params)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear) or not hasattr(model, "forward_head"):
        index.params["class_stats"] = "none: the classifier is not a timm Linear head"
        return
    try:
        index.class_stats = stats_for_index(model, meta, dataset, seed=seed, device=device, index=index)
    except IndexFileError as e:  # too many classes or features for the budget, or a class without items
        index.params["class_stats"] = f"none: {e}"
