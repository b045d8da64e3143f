"""Class statistics and the LDA head against direct numpy and scikit-learn computations."""

from __future__ import annotations

import numpy as np
import pytest
from edgeslice_device.errors import BundleError
from edgeslice_device.stats import ClassStatistics


def _data(seed=0, n=60, d=6, c=3):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(c), n // c)
    x = rng.normal(size=(n, d)) + 3 * rng.normal(size=(c, d))[y]
    return x, y, [f"c{i}" for i in range(c)]


def test_from_features_matches_direct_computation():
    x, y, names = _data()
    s = ClassStatistics.from_features(x, y, names)
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    scatter = sum((x[y == c] - means[c]).T @ (x[y == c] - means[c]) for c in range(3))
    np.testing.assert_allclose(s.means, means)
    np.testing.assert_allclose(s.scatter, scatter)
    np.testing.assert_array_equal(s.counts, [20, 20, 20])


def test_add_class_equals_statistics_of_everything_at_once():
    x, y, names = _data(c=4, n=80)
    first = ClassStatistics.from_features(x[y < 3], y[y < 3], names[:3])
    grown = first.add_class("c3", x[y == 3])
    whole = ClassStatistics.from_features(x, y, names)
    assert grown.classes == whole.classes
    np.testing.assert_allclose(grown.scatter, whole.scatter, atol=1e-9)
    np.testing.assert_allclose(grown.means, whole.means)
    with pytest.raises(BundleError, match="already"):
        grown.add_class("c1", x[:5])


def test_restrict_is_the_statistics_of_the_kept_features():
    x, y, names = _data()
    keep = [1, 3, 4]
    np.testing.assert_allclose(
        ClassStatistics.from_features(x, y, names).restrict(keep).scatter,
        ClassStatistics.from_features(x, y, names, dims=keep).scatter,
    )
    with pytest.raises(BundleError):
        ClassStatistics.from_features(x, y, names, dims=keep).restrict([0])


def test_lda_head_matches_sklearn_shrunk_lda():
    """sklearn's lsqr solver shrinks each class's biased covariance the same way; its pooled Σ is S/N, ours S/(N−C),
    so its coefficients are ours × N/(N−C) (uniform priors add the same log prior to every class)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x, y, names = _data(d=5)
    alpha = 0.2
    w, b = ClassStatistics.from_features(x, y, names).lda_head(5, shrinkage=alpha)
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=alpha, priors=np.full(3, 1 / 3)).fit(x, y)
    n, c = len(x), 3
    np.testing.assert_allclose(lda.coef_, w * n / (n - c), rtol=1e-4)
    np.testing.assert_allclose(lda.intercept_ - np.log(1 / 3), b * n / (n - c), rtol=1e-4, atol=1e-6)


def test_lda_head_zero_outside_dims_and_direct_formula():
    x, y, names = _data(d=6)
    s = ClassStatistics.from_features(x, y, names, dims=[0, 2, 5])
    w, b = s.lda_head(8, shrinkage=0.1)
    assert w.shape == (3, 8) and not w[:, [1, 3, 4, 6, 7]].any()
    cov = s.scatter / (60 - 3)
    shrunk = 0.9 * cov + (0.1 + 1e-6) * np.trace(cov) / 3 * np.eye(3)
    np.testing.assert_allclose(w[:, [0, 2, 5]], np.linalg.solve(shrunk, s.means.T).T, rtol=1e-10)


def test_save_load_round_trip_is_deterministic(tmp_path):
    x, y, names = _data()
    s = ClassStatistics.from_features(x, y, names, dims=[0, 1, 2])
    s.save(tmp_path / "a.safetensors")
    t = ClassStatistics.load(tmp_path / "a.safetensors", names)
    t.save(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    with pytest.raises(BundleError, match="other classes"):
        ClassStatistics.load(tmp_path / "a.safetensors", ["x", "y", "z"])
    with pytest.raises(BundleError, match="non-finite"):
        ClassStatistics(s.classes, s.dims, s.counts, s.means * np.nan, s.scatter)
