"""Class statistics over the classifier's input features, and the linear discriminant head they give.

Without autograd on the device, a new class is learned in closed form: per-class means ``μ_c`` and counts ``n_c``
of the features, and the pooled within-class scatter ``S = Σ_c Σ_i (x − μ_c)(x − μ_c)ᵀ``. Adding a class appends its
mean and adds its scatter exactly (no approximation), and the head over all classes is

    W_c = Σ_s⁻¹ μ_c,   b_c = −½ μ_cᵀ Σ_s⁻¹ μ_c,   Σ = S / (N − C),   Σ_s = (1 − α) Σ + α · tr(Σ)/k · I

(Streaming LDA, Hayes & Kanan, CVPR-W 2020), the same formula as the host's class-incremental head.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import safetensors_io
from .errors import BundleError

STATS_FORMAT = "edgeslice-class-stats"
STATS_VERSION = "1"
#: α of the head. Measured on the test suite's digits CNN (48 features; trained on digits 0-4, then 5, 6, 7, 8, 9 added
#: from 20 images each; accuracy over all 10 digits on held-out images, mean of seeds 0/1/2):
#: α = 0 → 0.899, 0.01 → 0.901, 0.05 → 0.899, 0.1 → 0.896, 0.2 → 0.879, 0.3 → 0.863, 0.5 → 0.838 (old digits 0.97,
#: new 0.83 at α ≤ 0.05). Flat up to 0.1, worse beyond; 0.05 (the host's default too) is kept because wide features
#: seen through few images (MobileNetV3's 1024 from a few hundred) leave the covariance near-singular, where a
#: smaller α is not enough.
DEFAULT_SHRINKAGE = 0.05
# A tiny ridge on top of the shrinkage keeps dead features (zero variance) invertible.
_RIDGE = 1e-6


@dataclass(frozen=True, eq=False)
class ClassStatistics:
    """Per-class means and counts, and the pooled within-class scatter, over features ``dims`` of the classifier input.

    Attributes:
        classes: class names, in label order.
        dims: (k,) int64 feature indices the statistics cover (sorted, unique).
        counts: (C,) float64 samples per class.
        means: (C, k) float64 class means.
        scatter: (k, k) float64 pooled within-class scatter (sum, not average).

    Example:
        >>> stats = ClassStatistics.from_features(feats, labels, ["cat", "dog"])  # doctest: +SKIP
        >>> w, b = stats.add_class("fox", fox_feats).lda_head(feats.shape[1])  # doctest: +SKIP
    """

    classes: tuple[str, ...]
    dims: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    scatter: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        for name, dtype in (("dims", np.int64), ("counts", np.float64), ("means", np.float64)):
            object.__setattr__(self, name, np.array(getattr(self, name), dtype=dtype))
        object.__setattr__(self, "scatter", np.array(self.scatter, dtype=np.float64))
        c, k = len(self.classes), len(self.dims)
        if len(set(self.classes)) != c:
            raise BundleError("class statistics name a class twice")
        if self.dims.shape != (k,) or (k and (self.dims.min() < 0 or np.any(np.diff(self.dims) <= 0))):
            raise BundleError("class statistics: dims must be sorted, unique, non-negative feature indices")
        shapes = {"counts": (c,), "means": (c, k), "scatter": (k, k)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise BundleError(f"class statistics: {name} has shape {getattr(self, name).shape}, expected {shape}")
            if not np.isfinite(getattr(self, name)).all():
                raise BundleError(f"class statistics: {name} has non-finite values")
        if c and self.counts.min() < 1:
            raise BundleError("class statistics: every class needs at least one sample")

    # --- building ------------------------------------------------------------------------------------------------
    @classmethod
    def from_features(
        cls,
        feats: np.ndarray,
        labels: Sequence[int] | np.ndarray,
        classes: Sequence[str],
        dims: Sequence[int] | np.ndarray | None = None,
    ) -> ClassStatistics:
        """Statistics of labelled feature vectors.

        Args:
            feats: (n, d) classifier-input features.
            labels: (n,) class index of each row, into ``classes``.
            classes: class names; every class needs at least one row.
            dims: feature indices to keep (all ``d`` when None).
        """
        x = np.asarray(feats, dtype=np.float64)
        y = np.asarray(labels, dtype=np.int64)
        if x.ndim != 2 or y.shape != (x.shape[0],):
            raise BundleError(f"features {x.shape} and labels {y.shape} do not match")
        keep = np.arange(x.shape[1]) if dims is None else _check_dims(dims, x.shape[1])
        x = x[:, keep]
        counts, means = np.zeros(len(classes)), np.zeros((len(classes), len(keep)))
        scatter = np.zeros((len(keep), len(keep)))
        for c in range(len(classes)):
            xc = x[y == c]
            if len(xc) == 0:
                raise BundleError(f"class {classes[c]!r} has no samples")
            counts[c], means[c] = len(xc), xc.mean(0)
            centred = xc - means[c]
            scatter += centred.T @ centred
        return cls(tuple(classes), keep, counts, means, scatter)

    def add_class(self, name: str, feats: np.ndarray) -> ClassStatistics:
        """These statistics plus one class measured from ``feats`` ((m, d) full classifier-input features).

        Raises:
            BundleError: the name is already a class, or the features do not cover ``dims``.
        """
        if name in self.classes:
            raise BundleError(f"class {name!r} is already in the bundle")
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0 or (len(self.dims) and x.shape[1] <= self.dims.max()):
            raise BundleError(f"features of shape {x.shape} do not cover the statistics' feature indices")
        new = ClassStatistics.from_features(x, np.zeros(len(x), np.int64), [name], self.dims)
        return self.merge(new)

    def restrict(self, dims: Sequence[int] | np.ndarray) -> ClassStatistics:
        """The statistics of a subset of the features (marginalising a Gaussian keeps the sub-matrix)."""
        keep = np.asarray(dims, dtype=np.int64)
        where = np.searchsorted(self.dims, keep)
        if np.any(where >= len(self.dims)) or np.any(self.dims[np.minimum(where, len(self.dims) - 1)] != keep):
            raise BundleError("restrict: the requested feature indices are not all covered by the statistics")
        return ClassStatistics(
            self.classes, keep, self.counts, self.means[:, where], self.scatter[np.ix_(where, where)]
        )

    def merge(self, other: ClassStatistics) -> ClassStatistics:
        """These classes followed by ``other``'s (disjoint names, same ``dims``); scatters add."""
        if not np.array_equal(self.dims, other.dims):
            raise BundleError("cannot merge class statistics over different features")
        dup = set(self.classes) & set(other.classes)
        if dup:
            raise BundleError(f"class {sorted(dup)[0]!r} is already in the bundle")
        return ClassStatistics(
            self.classes + other.classes,
            self.dims,
            np.concatenate([self.counts, other.counts]),
            np.concatenate([self.means, other.means]),
            self.scatter + other.scatter,
        )

    # --- the head ------------------------------------------------------------------------------------------------
    def covariance(self) -> np.ndarray:
        """(k, k) pooled within-class covariance ``S / (N − C)`` (``S / N`` when there are no degrees of freedom)."""
        dof = float(self.counts.sum()) - len(self.classes)
        return self.scatter / (dof if dof > 0 else max(float(self.counts.sum()), 1.0))

    def lda_head(self, d: int, shrinkage: float = DEFAULT_SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
        """The linear discriminant over all classes, as a classifier over the ``d`` features.

        Args:
            d: classifier input width; features outside ``dims`` get weight 0.
            shrinkage: α in [0, 1], the weight of ``tr(Σ)/k · I`` in the shrunk covariance.

        Returns:
            W (C, d) and b (C,), float64.
        """
        if not 0.0 <= shrinkage <= 1.0:
            raise BundleError(f"shrinkage {shrinkage} is not in [0, 1]")
        if len(self.dims) and self.dims.max() >= d:
            raise BundleError(f"class statistics cover feature {int(self.dims.max())}, past the {d} features")
        cov = self.covariance()
        k = cov.shape[0]
        scale = max(float(np.trace(cov)) / max(k, 1), 1e-12)
        shrunk = (1.0 - shrinkage) * cov + (shrinkage + _RIDGE) * scale * np.eye(k)
        w_k = np.linalg.solve(shrunk, self.means.T).T  # (C, k)
        w = np.zeros((len(self.classes), d))
        w[:, self.dims] = w_k
        b = -0.5 * np.einsum("ck,ck->c", self.means, w_k)
        return w, b

    # --- files ---------------------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The ``class_stats.safetensors`` bytes (equal content, equal bytes)."""
        tensors = {"dims": self.dims, "counts": self.counts, "means": self.means, "scatter": self.scatter}
        meta = {"format": STATS_FORMAT, "version": STATS_VERSION, "classes": json.dumps(list(self.classes))}
        return safetensors_io.dumps(tensors, meta)

    def save(self, path: str | Path) -> Path:
        """Write ``class_stats.safetensors`` durably; returns the path."""
        from ._files import write_durable

        return write_durable(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path, classes: Sequence[str] | None = None) -> ClassStatistics:
        """Read and validate ``class_stats.safetensors``.

        Args:
            path: the file.
            classes: when given, the classes the statistics must name (in order).

        Raises:
            BundleError: invalid file, shapes, values or classes.
        """
        raw, meta = safetensors_io.read_raw(path)
        if meta.get("format") != STATS_FORMAT or meta.get("version") != STATS_VERSION:
            raise BundleError(f"{Path(path).name} is not edgeslice class statistics version {STATS_VERSION}")
        expected = {"dims": ("I64",), "counts": ("F64",), "means": ("F64",), "scatter": ("F64", "F32")}
        if set(raw) != set(expected) or any(raw[n].dtype not in d for n, d in expected.items()):
            raise BundleError(f"{Path(path).name} must hold dims (I64), counts, means (F64) and scatter (F64/F32)")
        try:
            names = json.loads(meta.get("classes", ""))
        except json.JSONDecodeError as e:
            raise BundleError(f"{Path(path).name}: classes metadata is not JSON") from e
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BundleError(f"{Path(path).name}: classes metadata is not a list of names")
        if classes is not None and list(classes) != names:
            raise BundleError(f"{Path(path).name} describes other classes than the bundle")
        t = {name: r.numpy() for name, r in raw.items()}
        return cls(tuple(names), t["dims"], t["counts"], t["means"], t["scatter"])


def _check_dims(dims: Sequence[int] | np.ndarray, d: int) -> np.ndarray:
    keep = np.asarray(dims, dtype=np.int64)
    if keep.ndim != 1 or (len(keep) and (keep.min() < 0 or keep.max() >= d or np.any(np.diff(keep) <= 0))):
        raise BundleError(f"feature indices must be sorted, unique and below {d}")
    return keep
