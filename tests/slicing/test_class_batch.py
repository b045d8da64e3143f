"""The per-sample layout: rows are the model's pooled features, Gram matrices are formed per class from them,
no range limit, and ``class_batch`` is a documented no-op (same statistics, one pass)."""

from __future__ import annotations

import pytest
import torch

from edgeslice.slicing import SemanticSlicer
from edgeslice.slicing.observe import pool


@pytest.fixture()
def calibration(digits, tiny_mnv3):
    """Digits at 32 px, 12 per class in batches of 25, so most batches mix classes."""
    from edgeslice.pipeline import calibration_set, make_prepare
    from edgeslice.train import iterate_batches

    calib = calibration_set(digits, 12, seed=0)
    return list(iterate_batches(calib, 25)), make_prepare(digits)


def _calibrate(model, batches, prepare, class_batch=None, metrics=(), metric="taylor"):
    slicer = SemanticSlicer(model, prepare(batches[0][0][:2]), metric=metric)
    slicer.calibrate(batches, num_classes=10, prepare=prepare, metrics=metrics, class_batch=class_batch)
    return slicer


def test_rows_are_the_pooled_features_class_major_and_grams_match(tiny_mnv3, calibration):
    batches, prepare = calibration
    slicer = _calibrate(tiny_mnv3, batches, prepare, metric="avg")
    layer = slicer.layers[3]
    seen = []
    handle = dict(tiny_mnv3.named_modules())[layer.observe].register_forward_hook(
        lambda _m, _i, out: seen.append(pool(out.detach()).clone())
    )
    try:
        with torch.no_grad():
            for x, _ in batches:
                tiny_mnv3(prepare(x))
    finally:
        handle.remove()
    f = torch.cat(seen)  # calibration order, same batches: the same kernels, so the same bits
    y = torch.cat([b[1] for b in batches])
    s = slicer.stats.per_layer[layer.name]
    assert s.features.shape == (len(y), layer.channels) and s.features.dtype == torch.float32
    for c in range(10):
        fc = f[y == c]
        assert torch.equal(s.class_features(c), fc)  # class-major, calibration order within a class
        fc64 = fc.double()
        torch.testing.assert_close(s.class_gram(c), fc64.T @ fc64, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s.total[c], fc64.sum(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s.sq[c], (fc64 * fc64).sum(0), rtol=1e-12, atol=1e-12)
        assert float(s.count[c]) == len(fc)
    assert s.class_gram(0).shape == (layer.channels, layer.channels)


def test_class_batch_is_a_no_op_one_pass_same_bits(tiny_mnv3, calibration):
    from edgeslice.slicing import stats as stats_mod

    batches, prepare = calibration
    whole = _calibrate(tiny_mnv3, batches, prepare)
    seen = []
    original = stats_mod._run_chunk

    def counting(*args):
        seen.append(1)
        return original(*args)

    stats_mod._run_chunk = counting
    try:
        grouped = _calibrate(tiny_mnv3, batches, prepare, 3)
    finally:
        stats_mod._run_chunk = original
    assert len(seen) == len(batches)  # one pass, whatever class_batch says
    for name, s in whole.stats.per_layer.items():
        g = grouped.stats.per_layer[name]
        for field in ("count", "total", "taylor", "sumsq", "features"):
            assert torch.equal(getattr(s, field), getattr(g, field)), f"{name}.{field}"
    for metric in ("taylor", "var", "ens", "avg"):
        a, b = whole.with_metric(metric), grouped.with_metric(metric)
        for name, curves in a.curves().items():
            for (oa, sa), (ob, sb) in zip(curves, b.curves()[name], strict=True):
                assert torch.equal(oa, ob) and torch.equal(sa, sb), f"{metric} {name}"
    assert 0 < whole.slice(theta=0.9).kept_channels < whole.slice(theta=0.9).total_channels
    with pytest.raises(ValueError, match="class_batch must be >= 1"):
        _calibrate(tiny_mnv3, batches, prepare, 0)


def test_scan_solver_reads_the_class_grams_and_agrees_with_exact(tiny_mnv3, calibration):
    batches, prepare = calibration
    slicer = _calibrate(tiny_mnv3, batches, prepare, 4)
    thetas = [0.5, 0.8, 0.9, 0.97]
    exact, scan = slicer.k_table(thetas), slicer.k_table(thetas, solver="scan")
    for name in exact:
        # Both evaluate the same similarity on the same G_c; the scan sums subsets directly, so ks may differ only
        # where sim_k sits within rounding of θ — not on this data.
        assert torch.equal(exact[name], scan[name]), name


def test_no_range_limit_similarity_is_scale_invariant(toy):
    """Activations around 1e15 (the old fixed-point sums stopped at 2^40 ≈ 1.1e12) slice like the unscaled net."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 4, generator=gen) * torch.tensor([1.0, 0.5, 0.2, 0.05])
    y = torch.arange(40) % 2
    plain = SemanticSlicer(toy, x[:1], metric="avg")
    plain.calibrate([(x[:20], y[:20]), (x[20:], y[20:])], num_classes=2)
    big = SemanticSlicer(toy, x[:1], metric="avg")
    big.calibrate([(x[:20] * 1e15, y[:20]), (x[20:] * 1e15, y[20:])], num_classes=2)
    for (oa, sa), (ob, sb) in zip(plain.curves()["hidden"], big.curves()["hidden"], strict=True):
        assert torch.equal(oa, ob)
        torch.testing.assert_close(sa, sb, rtol=1e-5, atol=1e-7)  # x·1e15 rounds in float32
    assert float(big.stats.per_layer["hidden"].class_gram(0).max()) > 2.0**40
    for theta in (0.5, 0.9, 0.99):
        assert torch.equal(plain.slice(theta=theta).critical["hidden"], big.slice(theta=theta).critical["hidden"])


def test_non_finite_features_are_a_clear_error(toy):
    x = torch.ones(4, 4)
    x[1, 2] = float("inf")
    slicer = SemanticSlicer(toy, x[:1], metric="avg")
    with pytest.raises(ValueError, match="not finite"):
        slicer.calibrate([(x, torch.tensor([0, 1, 0, 1]))], num_classes=2)
    with pytest.raises(ValueError, match="outside 0..1"):
        slicer.calibrate([(torch.ones(2, 4), torch.tensor([0, 2]))], num_classes=2)
