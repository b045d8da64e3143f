"""Class statistics for class-incremental heads without stored images: Gaussian statistics over frozen features
(SLDA-style), and their file form (the index's ``class_stats`` block, docs/index-format.md).

On the device an increment must leave a model whose *one* argmax over all classes is right, without task A's
images. The features the classifier reads (:func:`~edgeslice.ondevice.guarantees.pre_logits`) are a fixed function
of the input as long as the layers before the classifier do not train, so statistics computed once on task A's data
(at slicing time, on the host) stay valid for every later increment:

- per-class means ``μ_c`` and counts ``n_c`` of the features;
- the pooled within-class covariance ``Σ``, kept as ``Vᵀ diag(λ) V + diag(r)`` (the top ``k`` eigenvectors plus
  the residual diagonal), with ``k`` the largest that keeps the statistics within a byte budget (64 KB by default).

The features are the frozen classifier inputs, and (version 3) *taps*: the frozen channels of earlier sliced layers,
spatially averaged. Isolation keeps those exact too, and the router of the routed head reads them: on the paper's
MLP (Fashion-MNIST 0-4 → 5-9, seeds 0/1/2) they lift the routed head from 80.12/81.33/79.27 % to 83.57/83.54/83.32 %
class-incremental accuracy.
Taps are added, deepest layer first, only while the covariance still fits the budget at rank 64 or more
(:func:`choose_taps`).

Stored values are rounded to float16 when they are made, so the statistics in memory are exactly the ones in the
index file. An increment adds the new classes' means and pools their within-class scatter into ``Σ`` (the new
data's scatter is exact; the old part is the stored approximation), then writes the linear discriminant head

    W_c = Σ_s⁻¹ μ_c,   b_c = −½ μ_cᵀ Σ_s⁻¹ μ_c,   Σ_s = (1 − α) Σ + α · tr(Σ)/d · I

into the classifier: a plain ``Linear``, so the checkpoint, ``timm.create_model`` and the ONNX export are unchanged,
and the exported model predicts over all classes with one argmax (Streaming LDA, Hayes & Kanan, CVPR-W 2020; the
frozen-feature Gaussian view of FeCAM, NeurIPS 2023, with one shared covariance).

Imports torch and numpy only: the device reads, grows and installs these statistics. The routed head that reads
them is :mod:`edgeslice.routed`; computing them for an index at slicing time is
:mod:`edgeslice.ondevice.host_stats`.
"""

from __future__ import annotations

from .features import (
    MIN_TAP_RANK,
    choose_taps,
    class_stats,
    feature_moments,
    router_features,
    stats_from_moments,
)
from .statistics import (
    DEFAULT_BUDGET,
    DEFAULT_SHRINKAGE,
    READ_VERSIONS,
    STATS_FORMAT,
    STATS_VERSION,
    ClassStats,
    Tap,
    feature_width,
)

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_SHRINKAGE",
    "MIN_TAP_RANK",
    "READ_VERSIONS",
    "STATS_FORMAT",
    "STATS_VERSION",
    "ClassStats",
    "Tap",
    "choose_taps",
    "class_stats",
    "feature_moments",
    "feature_width",
    "router_features",
    "stats_from_moments",
]
