"""What an increment keeps bit for bit and what only up to float rounding, as checks the product and the tests run.

**Bit for bit, on any CPU** (the saved bits are copied back, no arithmetic is involved):

- every frozen parameter row and BatchNorm buffer entry (:class:`~edgeslice.ondevice.ExactFreezer` restores them
  after every optimizer step), and the old classes' classifier rows;
- the isolation proof's ``max_old_logit_change == 0.0``: it compares two forwards of the *same* architecture with
  the *same* shapes on the *same* batch, so the same kernels run; the frozen rows read the trainable channels only
  through weights that are exactly 0, and ``0 · x`` and ``a + 0`` are exact in IEEE arithmetic for finite ``x``.

**Bit for bit for the same input batch, batch size and thread count** (same shapes, so the same kernels):

- the frozen sub-network's activations, in particular the features on the frozen channels that the classifier
  reads (:func:`pre_logits`), before and after training and before and after the classifier is grown (growing the
  classifier changes no layer before it).

**Only up to float rounding**: the old classes' *logits* once the classifier has grown. The old rows are the same
weights applied to bit-identical features, but a GEMM with more output rows (or another batch size or thread
count) may run another kernel with another summation order; on an AMD EPYC with MKL the 5- and 8-row products
differ by ~1e-5. Any order of summing ``D`` products and a bias is within ``γ(D+1)·(|W|·|f| + |b|)`` of the exact
value (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1; ``γ(n) = n·u / (1 − n·u)``, ``u`` the unit
roundoff; fused multiply-adds only make it smaller), so two kernels differ by at most twice that:
:func:`logit_rounding_bound`. The argmax over the old classes can only change on a tie within that bound.

Only torch is imported: this runs on the device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..torchutil import pre_logits as pre_logits  # re-exported: the old import path


def logit_rounding_bound(head: nn.Linear, features: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-logit bound on ``|a − b|`` for two float evaluations, in any summation order, of ``head``'s first rows.

    Args:
        head: the classifier (a Linear).
        features: (B, D) the features it reads.
        rows: how many leading rows (classes).

    Returns:
        (B, rows) float64: ``2·γ(D+1)·(|f|·|W[:rows]|ᵀ + |b[:rows]|)``.
    """
    w = head.weight[:rows].detach().double().abs()
    s = features.detach().double().abs() @ w.T
    if head.bias is not None:
        s = s + head.bias[:rows].detach().double().abs()
    n = features.shape[1] + 1
    u = torch.finfo(head.weight.dtype).eps / 2
    return 2.0 * (n * u / (1.0 - n * u)) * s


@torch.no_grad()
def old_logit_check(
    ref_features: torch.Tensor,
    ref_logits: torch.Tensor,
    model: nn.Module,
    x: torch.Tensor,
    old_rows: int,
    frozen_features: torch.Tensor | None,
) -> dict[str, Any]:
    """Compare ``model`` on ``x`` with a reference (same ``x``, same batch) under the guarantees above.

    Args:
        ref_features: (B, D) :func:`pre_logits` of the reference model on ``x``.
        ref_logits: (B, old_rows) its logits.
        model: the model after the increment (eval mode is the caller's business).
        x: the same normalised batch.
        old_rows: the old classes.
        frozen_features: (D,) bool, the feature channels that must be bit-identical, or None to skip that part.

    Returns:
        ``frozen_features_exact`` (bool or None), ``max_old_logit_change``, ``max_rounding_bound`` and
        ``within_rounding`` (every old logit within its :func:`logit_rounding_bound`).
    """
    feats = pre_logits(model, x)
    logits = model.get_classifier()(feats)[:, :old_rows]
    exact = None
    if frozen_features is not None:
        mask = frozen_features.to(feats.device, torch.bool)
        exact = bool(torch.equal(feats[:, mask], ref_features[:, mask]))
    bound = logit_rounding_bound(model.get_classifier(), feats, old_rows)
    delta = (logits.double() - ref_logits.double()).abs()
    return {
        "frozen_features_exact": exact,
        "max_old_logit_change": float(delta.max()) if delta.numel() else 0.0,
        "max_rounding_bound": float(bound.max()) if bound.numel() else 0.0,
        "within_rounding": bool((delta <= bound).all()),
    }


__all__ = ["logit_rounding_bound", "old_logit_check", "pre_logits"]
