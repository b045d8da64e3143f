"""Widths apart from channels: entry thresholds reproduce every θ's slice, and widths are filled exactly."""

from __future__ import annotations

import copy

import torch

from edgeslice.allocation import entry_thresholds, group_widths, keep_at_widths, rank_scores, semantic_rank
from edgeslice.restructure import plan_restructure, restructure_
from edgeslice.slicing import SemanticSlicer


def _slicer(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 1, 32, 32, generator=g)
    y = torch.arange(60) % 3
    slicer = SemanticSlicer(model, x[:2], metric="avg")
    slicer.calibrate([(x[:30], y[:30]), (x[30:], y[30:])], num_classes=3)
    return slicer, x


def test_entry_thresholds_reproduce_every_theta(tiny_mnv3):
    slicer, _ = _slicer(tiny_mnv3)
    entry = entry_thresholds(slicer)
    for theta in (0.5, 0.8, 0.9, 0.95, 0.99, 1.0):
        result = slicer.slice(theta=theta)
        for name, crit in result.critical.items():
            assert torch.equal(crit, entry[name] < theta), (theta, name)


def test_keep_at_widths_fills_each_group_exactly(tiny_mnv3):
    slicer, x = _slicer(tiny_mnv3)
    result = slicer.slice(theta=0.9)
    rank = semantic_rank(slicer, result.scores)
    _, plans, _ = plan_restructure(tiny_mnv3, slicer.layers, result.critical, x[:2])
    # the semantic widths themselves: filling them by semantic rank gives back the θ slice's kept channels
    ours = copy.deepcopy(tiny_mnv3)
    report = restructure_(ours, slicer.layers, result.critical, x[:2], scores=result.scores)
    widths = group_widths(ours, [p.root for p in plans])
    keep = keep_at_widths(tiny_mnv3, slicer.layers, x[:2], widths, rank_scores(rank))
    for name, k in keep.items():
        assert int(k.sum()) == int(report.effective_keep[name].sum()), name
    # other widths (half of every group, at least one): each group keeps exactly that many
    half = {r: max(1, w // 2) for r, w in widths.items()}
    keep = keep_at_widths(tiny_mnv3, slicer.layers, x[:2], half, rank_scores(rank))
    other = copy.deepcopy(tiny_mnv3)
    restructure_(other, slicer.layers, keep, x[:2])
    assert group_widths(other, list(half)) == half
    # and the kept channels are the best-ranked ones of their layer
    name = "conv_head"  # alone in its group: the group rank is its own
    kept = keep[name]
    assert float(rank[name][kept].min()) > float(rank[name][~kept].max())
