"""--class-batch: streaming the per-class Gram matrices in class groups gives the same slices, bit for bit."""

from __future__ import annotations

import pytest
import torch

from edgeslice.slicing import SemanticSlicer


@pytest.fixture()
def calibration(digits, tiny_mnv3):
    """Digits at 32 px, 12 per class in batches of 25, so most batches mix classes and straddle class groups."""
    from edgeslice.pipeline import calibration_set, make_prepare
    from edgeslice.train import iterate_batches

    calib = calibration_set(digits, 12, seed=0)
    return list(iterate_batches(calib, 25)), make_prepare(digits)


def _calibrate(model, batches, prepare, class_batch, metrics=()):
    slicer = SemanticSlicer(model, prepare(batches[0][0][:2]), metric="taylor")
    slicer.calibrate(batches, num_classes=10, prepare=prepare, metrics=metrics, class_batch=class_batch)
    return slicer


def test_class_groups_give_identical_statistics_curves_and_slices(tiny_mnv3, calibration):
    batches, prepare = calibration
    whole = _calibrate(tiny_mnv3, batches, prepare, None)
    grouped = _calibrate(tiny_mnv3, batches, prepare, 3)  # groups {0,1,2} {3,4,5} {6,7,8} {9}
    for name, s in whole.stats.per_layer.items():
        g = grouped.stats.per_layer[name]
        assert g.gram is None  # consumed group by group
        for field in ("count", "total", "taylor"):
            assert torch.equal(getattr(s, field), getattr(g, field)), f"{name}.{field}"
        assert torch.equal(s.sq, g.sq)  # the variance metrics see the same Σf²
    for metric in ("taylor", "var", "ens", "avg"):
        a, b = whole.with_metric(metric), grouped.with_metric(metric)
        for name, curves in a.curves().items():
            for (oa, sa), (ob, sb) in zip(curves, b.curves()[name], strict=True):
                assert torch.equal(oa, ob) and torch.equal(sa, sb), f"{metric} {name}"
        ra, rb = a.slice(theta=0.9), b.slice(theta=0.9)
        assert all(torch.equal(ra.per_class[n], rb.per_class[n]) for n in ra.per_class)
    assert 0 < whole.slice(theta=0.9).kept_channels < whole.slice(theta=0.9).total_channels


def test_class_batch_skips_batches_without_the_groups_classes(tiny_mnv3, calibration):
    from edgeslice.slicing import stats as stats_mod

    batches, prepare = calibration
    seen = []
    original = stats_mod._accumulate

    def counting(*args):
        seen.append(1)
        return original(*args)

    stats_mod._accumulate = counting
    try:
        _calibrate(tiny_mnv3, batches, prepare, 5)
    finally:
        stats_mod._accumulate = original
    # 120 samples sorted by class in 5 batches of 25: classes 0-4 end inside batch 3 (samples 0-59), so group
    # {0..4} runs batches 0-2 and group {5..9} batches 2-4: 6 batch passes, not 2 x 5.
    assert len(seen) == 6


def test_scan_solver_needs_the_gram_matrices(tiny_mnv3, calibration):
    batches, prepare = calibration
    grouped = _calibrate(tiny_mnv3, batches, prepare, 4)
    with pytest.raises(ValueError, match="class_batch"):
        grouped.slice(theta=0.9, solver="scan")
    with pytest.raises(ValueError, match="class_batch must be >= 1"):
        _calibrate(tiny_mnv3, batches, prepare, 0)
