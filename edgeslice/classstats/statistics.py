"""The class statistics themselves: :class:`ClassStats` (per-class means, a low-rank + diagonal pooled covariance,
the linear discriminant head they give, their growth by new classes) and their file form, the index's
``class_stats`` block (docs/index-format.md), which the torch-free device runtime reads too.

Stored values are rounded to float16 when they are made (:func:`fit_stats`), so the statistics in memory are exactly
the ones in the index file.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..errors import IndexFileError

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_SHRINKAGE",
    "READ_VERSIONS",
    "STATS_FORMAT",
    "STATS_VERSION",
    "ClassStats",
    "Tap",
    "feature_width",
    "fit_stats",
    "fixed_bytes",
]

STATS_FORMAT = "edgeslice-class-stats"
STATS_VERSION = 3
#: Versions this edgeslice reads (1: statistics of the model as sliced, without the ``isolated`` flag; 2: without
#: taps).
READ_VERSIONS = (1, 2, 3)
#: Default bound on the statistics' stored bytes (the issue's "at most 64 KB of state beyond model and index").
DEFAULT_BUDGET = 64 * 1024
DEFAULT_SHRINKAGE = 0.05


class Tap(NamedTuple):
    """Frozen channels ``mask`` of the sliced layer ``layer``, read by the router at that module's own output (a
    Conv2d's or Linear's, before its normalisation and activation), averaged over positions.

    (At the output the slicer observes, after the activation, the router was measured worse: the paper's MLP,
    Fashion-MNIST 0-4 → 5-9, seeds 0/1/2, 82.39/82.08/81.85 % against 83.57/83.54/83.32 % class-incremental.)
    """

    layer: str
    mask: torch.Tensor


def _f16(t: torch.Tensor) -> torch.Tensor:
    """Round to float16 and back: what the file can hold."""
    return t.to(torch.float16).to(torch.float32)


@dataclass
class ClassStats:
    """Per-class feature means and a low-rank + diagonal pooled covariance over the classifier's input features.

    Attributes:
        classes: class names, in label order.
        dims: (D,) bool, the classifier input features the statistics (and the head) use.
        counts: (C,) items each class's statistics were computed on.
        means: (C, d) float32 (float16-representable), d = dims.sum().
        basis: (k, d) top eigenvectors of the pooled within-class covariance.
        eigvals: (k,) their eigenvalues.
        diag: (d,) residual variance (covariance diagonal minus the low-rank part's, ≥ 0).
        shrinkage: α of the head.
        budget: byte bound the statistics were made to fit.
        isolated: the features are those of the model after :func:`~edgeslice.ondevice.isolate.isolate_` of the
            index's critical channels, over the classifier inputs the frozen sub-network computes (``dims``): they
            stay exact through any increment that trains the other channels (the routed head needs this).
        old_scorer: what scores the sliced classes within their task in the routed head: ``rows`` (the isolated
            classifier rows) or ``lda`` (the discriminant), whichever was more accurate on held-out images of those
            classes at slicing time (``scorer_accuracy``, percent). Isolation cuts the frozen channels' non-critical
            inputs; when that costs the old rows much (an index that keeps few channels), the discriminant is better.
    """

    classes: list[str]
    dims: torch.Tensor
    counts: torch.Tensor
    means: torch.Tensor
    basis: torch.Tensor
    eigvals: torch.Tensor
    diag: torch.Tensor
    shrinkage: float = DEFAULT_SHRINKAGE
    budget: int = DEFAULT_BUDGET
    isolated: bool = False
    old_scorer: str = "rows"
    scorer_accuracy: dict[str, float] | None = None
    taps: list[Tap] = field(default_factory=list)
    version: int = STATS_VERSION

    # --- sizes and covariance --------------------------------------------------------------------------------
    @property
    def d(self) -> int:
        """Features: the classifier inputs in ``dims``, then each tap's channels."""
        return feature_width(self.dims, self.taps)

    def nbytes(self) -> int:
        """Bytes of the stored arrays (float16 values, int32 counts, the bitsets of dims and taps)."""
        values = self.means.numel() + self.basis.numel() + self.eigvals.numel() + self.diag.numel()
        return 2 * values + 4 * self.counts.numel() + _bitset_bytes(self.dims, self.taps)

    def same_features(self, other: ClassStats) -> bool:
        """Whether ``other`` is over the same features (classifier inputs, taps, isolation)."""
        return (
            torch.equal(other.dims, self.dims)
            and other.isolated == self.isolated
            and [t.layer for t in other.taps] == [t.layer for t in self.taps]
            and all(torch.equal(a.mask, b.mask) for a, b in zip(other.taps, self.taps, strict=True))
        )

    def logits_only(self) -> ClassStats:
        """These statistics without the taps: over the classifier inputs alone (what a Linear head can read)."""
        if not self.taps:
            return self
        d0 = int(self.dims.sum())
        return fit_stats(
            list(self.classes),
            self.dims,
            self.counts,
            self.means[:, :d0],
            self.covariance()[:d0, :d0],
            shrinkage=self.shrinkage,
            budget=self.budget,
            isolated=self.isolated,
        ).with_scorer(self.old_scorer, self.scorer_accuracy)

    def covariance(self) -> torch.Tensor:
        """(d, d) float64 pooled within-class covariance the statistics stand for."""
        v = self.basis.double()
        return v.T @ torch.diag(self.eigvals.double()) @ v + torch.diag(self.diag.double())

    # --- the head ----------------------------------------------------------------------------------------------
    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, d) weights and (C,) biases of the linear discriminant (float32)."""
        cov = self.covariance()
        d = cov.shape[0]
        scale = max(float(torch.trace(cov)) / d, 1e-12)
        # Shrink towards the mean variance; a 1e-6 ridge keeps dead features (zero variance) invertible.
        cov = (1.0 - self.shrinkage) * cov + (self.shrinkage + 1e-6) * scale * torch.eye(d, dtype=cov.dtype)
        mu = self.means.double()
        w = torch.linalg.solve(cov, mu.T).T
        b = -0.5 * (mu * w).sum(1)
        return w.float(), b.float()

    def install_(self, model: nn.Module) -> None:
        """Write the head into ``model``'s classifier (grown to the statistics' classes if it has fewer rows).

        A Linear classifier reads only the classifier inputs: with taps, the head is that of :meth:`logits_only`.
        """
        head = model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise IndexFileError(f"class statistics need a Linear classifier, not {type(head).__name__}")
        if head.in_features != self.dims.numel():
            raise IndexFileError(
                f"class statistics are over {self.dims.numel()} features, the classifier reads {head.in_features}"
            )
        if head.out_features != len(self.classes):
            from ..heads import resize_classifier_

            head = resize_classifier_(model, len(self.classes)).to(self.means.device)
        w, b = self.logits_only().head()
        with torch.no_grad():
            head.weight.zero_()
            head.weight[:, self.dims] = w.to(head.weight)
            if head.bias is not None:
                head.bias.copy_(b.to(head.bias))

    # --- growth -------------------------------------------------------------------------------------------------
    def extend(self, new: ClassStats) -> ClassStats:
        """These classes plus ``new``'s: means appended, within-class covariances pooled, re-fit to the budget.

        (Keeping the old covariance instead, so that the old classes' rows stay the same, was measured worse: MLP,
        Fashion-MNIST 0-4 → 5-9, 66.8 % against 76.2 % class-incremental accuracy.)
        """
        if not self.same_features(new):
            raise IndexFileError("class statistics over different features cannot be merged")
        clash = sorted(set(self.classes) & set(new.classes))
        if clash:
            raise IndexFileError(f"class statistics already have class(es) {', '.join(clash)}")
        dof_a, dof_b = int(self.counts.sum()) - len(self.classes), int(new.counts.sum()) - len(new.classes)
        scatter = self.covariance() * max(dof_a, 0) + new.covariance() * max(dof_b, 0)
        cov = scatter / max(dof_a + dof_b, 1)
        return fit_stats(
            list(self.classes) + list(new.classes),
            self.dims,
            torch.cat([self.counts, new.counts]),
            torch.cat([self.means, new.means]),
            cov,
            shrinkage=self.shrinkage,
            budget=self.budget,
            isolated=self.isolated,
            taps=self.taps,
        ).with_scorer(self.old_scorer, self.scorer_accuracy)

    def with_scorer(self, old_scorer: str, accuracy: dict[str, float] | None) -> ClassStats:
        """These statistics with the old classes' within-task scorer set (see :attr:`old_scorer`)."""
        self.old_scorer, self.scorer_accuracy = old_scorer, accuracy
        return self

    # --- file form ----------------------------------------------------------------------------------------------
    def _payload(self) -> bytes:
        arrays = [self.means, self.basis, self.eigvals, self.diag]
        raw = b"".join(a.to(torch.float16).contiguous().numpy().astype("<f2").tobytes() for a in arrays)
        return raw + self.counts.numpy().astype("<i4").tobytes()

    def to_dict(self) -> dict[str, Any]:
        from ..bitsets import pack_bits

        payload = self._payload()
        taps = [{"layer": t.layer, "channels": int(t.mask.numel()), "mask": pack_bits(t.mask)} for t in self.taps]
        return {
            "format": STATS_FORMAT,
            "version": self.version,
            "feature": "pre_logits",
            "classes": list(self.classes),
            "dims": pack_bits(self.dims),
            "features": int(self.dims.numel()),
            "rank": int(self.basis.shape[0]),
            "shrinkage": self.shrinkage,
            "budget": self.budget,
            "isolated": self.isolated,
            "old_scorer": self.old_scorer,
            "scorer_accuracy": self.scorer_accuracy,
            "taps": taps,
            "bytes": self.nbytes(),
            "data": base64.b64encode(payload).decode("ascii"),
            "sha256": _digest(payload, taps),
        }

    @classmethod
    def from_dict(
        cls, d: Any, *, classes: Sequence[str] | None = None, layers: dict[str, int] | None = None
    ) -> ClassStats:
        """Read and validate; ``classes``: the index's classes, which the statistics must match; ``layers``: the
        index's layers (name → channels), which the taps must be among."""
        from ..bitsets import unpack_bits

        if not isinstance(d, dict) or d.get("format") != STATS_FORMAT:
            raise IndexFileError("index class statistics: not an edgeslice class-statistics block")
        if d.get("version") not in READ_VERSIONS:
            raise IndexFileError(f"index class statistics: unsupported version {d.get('version')!r}")
        try:
            names = [str(c) for c in d["classes"]]
            dims = unpack_bits(d["dims"], int(d["features"]))
            taps = [Tap(str(t["layer"]), unpack_bits(t["mask"], int(t["channels"]))) for t in d.get("taps", [])]
            if d["version"] < 3 and "taps" in d:
                raise IndexFileError("index class statistics: taps in a version before 3")
            if len({t.layer for t in taps}) != len(taps) or any(not t.mask.any() for t in taps):
                raise IndexFileError("index class statistics: a tap layer is repeated or has no channels")
            if layers is not None and any(layers.get(t.layer) != t.mask.numel() for t in taps):
                raise IndexFileError("index class statistics: a tap is not one of the index's layers")
            k, n_cls = int(d["rank"]), len(names)
            dd = feature_width(dims, taps)
            payload = base64.b64decode(d["data"], validate=True)
            if _digest(payload, d.get("taps", [])) != d["sha256"]:
                raise IndexFileError("index class statistics: checksum mismatch (the file was changed)")
            n_values = n_cls * dd + k * dd + k + dd
            if len(payload) != 2 * n_values + 4 * n_cls or k < 0 or n_cls < 1 or dd < 1:
                raise IndexFileError("index class statistics: data size does not match classes, rank and features")
            values = torch.from_numpy(np.frombuffer(payload[: 2 * n_values], dtype="<f2").astype(np.float32))
            counts = torch.from_numpy(np.frombuffer(payload[2 * n_values :], dtype="<i4").astype(np.int64))
            means, rest = values[: n_cls * dd].view(n_cls, dd), values[n_cls * dd :]
            basis, rest = rest[: k * dd].view(k, dd), rest[k * dd :]
            eigvals, diag = rest[:k], rest[k:]
            stats = cls(
                classes=names,
                dims=dims,
                counts=counts,
                means=means.clone(),
                basis=basis.clone(),
                eigvals=eigvals.clone(),
                diag=diag.clone(),
                shrinkage=float(d["shrinkage"]),
                budget=int(d["budget"]),
                isolated=bool(d.get("isolated", False)) if d["version"] >= 2 else False,
                old_scorer=str(d.get("old_scorer", "rows")),
                scorer_accuracy=_accuracies(d.get("scorer_accuracy")),
                taps=taps,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFileError(f"index class statistics are malformed: {e!r}") from e
        if not all(torch.isfinite(t).all() for t in (stats.means, stats.basis, stats.eigvals, stats.diag)):
            raise IndexFileError("index class statistics hold non-finite values")
        if (stats.counts < 1).any() or (stats.eigvals < 0).any() or (stats.diag < 0).any():
            raise IndexFileError("index class statistics: counts must be >= 1 and variances >= 0")
        if stats.old_scorer not in ("rows", "lda"):
            raise IndexFileError(f"index class statistics: old_scorer {stats.old_scorer!r} is not 'rows' or 'lda'")
        if not 0.0 <= stats.shrinkage <= 1.0:
            raise IndexFileError(f"index class statistics: shrinkage {stats.shrinkage} is not in [0, 1]")
        if stats.nbytes() != int(d["bytes"]) or stats.nbytes() > stats.budget:
            raise IndexFileError(f"index class statistics: {stats.nbytes()} bytes, over the {stats.budget} B budget")
        if classes is not None and list(classes) != names:
            raise IndexFileError("index class statistics are for other classes than the index")
        return stats


def _digest(payload: bytes, taps: list[Any]) -> str:
    """Checksum of the arrays and (version 3) of the taps' layers and masks."""
    if not taps:
        return hashlib.sha256(payload).hexdigest()  # as versions 1 and 2
    text = "|".join(f"{t['layer']}:{t['channels']}:{t['mask']}" for t in taps)
    return hashlib.sha256(payload + text.encode()).hexdigest()


def _bitset_bytes(dims: torch.Tensor, taps: Sequence[Tap]) -> int:
    return (dims.numel() + 7) // 8 + sum((t.mask.numel() + 7) // 8 for t in taps)


def _accuracies(d: Any) -> dict[str, float] | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise ValueError("scorer_accuracy is not an object")
    return {str(k): float(v) for k, v in d.items()}


def fit_stats(
    classes: list[str],
    dims: torch.Tensor,
    counts: torch.Tensor,
    means: torch.Tensor,
    cov: torch.Tensor,
    *,
    shrinkage: float,
    budget: int,
    isolated: bool = False,
    taps: Sequence[Tap] = (),
) -> ClassStats:
    """Compress ``cov`` to the largest rank whose statistics fit ``budget`` bytes; values rounded to float16."""
    d, n_cls = feature_width(dims, taps), len(classes)
    fixed = fixed_bytes(n_cls, d, dims, taps)
    if fixed > budget:
        raise IndexFileError(
            f"class statistics for {n_cls} classes over {d} features need {fixed} B, over the {budget} B budget"
        )
    k = min(d, (budget - fixed) // (2 * (d + 1)))
    cov = 0.5 * (cov + cov.T)
    evals, evecs = torch.linalg.eigh(cov.double())
    order = evals.argsort(descending=True)[:k]
    lam = _f16(evals[order].clamp_min(0).float())
    v = _f16(evecs[:, order].T.float().contiguous())
    low = (v.double() ** 2 * lam.double()[:, None]).sum(0)
    diag = _f16((torch.diagonal(cov).double() - low).clamp_min(0).float())
    return ClassStats(
        classes=list(classes),
        dims=dims.clone(),
        counts=counts.to(torch.int64).clone(),
        means=_f16(means.float()),
        basis=v,
        eigvals=lam,
        diag=diag,
        shrinkage=shrinkage,
        budget=budget,
        isolated=isolated,
        taps=[Tap(t.layer, t.mask.clone()) for t in taps],
    )


def fixed_bytes(n_cls: int, d: int, dims: torch.Tensor, taps: Sequence[Tap]) -> int:
    """Bytes of everything but the low-rank part: means, residual diagonal, counts, bitsets."""
    return 2 * (n_cls * d + d) + 4 * n_cls + _bitset_bytes(dims, taps)


def feature_width(dims: torch.Tensor, taps: Sequence[Tap]) -> int:
    """Features of statistics over ``dims`` and ``taps``."""
    return int(dims.sum()) + sum(int(t.mask.sum()) for t in taps)
