"""Layer-wise sparsity allocations for magnitude pruning (Lee et al., "Layer-adaptive Sparsity for the
Magnitude-based Pruning", ICLR 2021): Global, Uniform+, ERK and LAMP.

A pruner is a pure function ``pruner(weights, masks, n_keep) -> new_masks``:

- ``weights``: the prunable weight tensors, in ``model.named_modules()`` order (detached; the last one is the
  classifier).
- ``masks``: boolean masks of the weights that currently survive (True = keep).
- ``n_keep``: how many weights must survive in total, at most the current number of survivors.

It returns one boolean mask per weight, each a subset of the input mask, keeping exactly ``n_keep`` weights.
Pruned weights never come back. Ties are broken by position (see :mod:`edgeslice.pruning._ranking`).

Example:
    >>> import torch
    >>> from edgeslice.pruning import get_pruner
    >>> weights = [torch.tensor([1.0, -4.0, 2.0]), torch.tensor([3.0, 0.5])]
    >>> masks = [torch.ones(3, dtype=torch.bool), torch.ones(2, dtype=torch.bool)]
    >>> [m.tolist() for m in get_pruner("global")(weights, masks, 2)]
    [[False, True, False], [True, False]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._ranking import apportion, keep_top_k

Pruner = Callable[[Sequence[Tensor], Sequence[Tensor], int], list[Tensor]]

#: Smallest density the classifier keeps under Uniform+ (Gale et al., 2019), as a fraction n/d.
UNIFORM_PLUS_LAST_LAYER_MIN_DENSITY = (1, 5)

_PRUNERS: dict[str, Pruner] = {}


class PrunerLimitError(ValueError):
    """The allocation cannot reach the requested sparsity (e.g. Uniform+'s first/last-layer rules forbid it)."""


def register_pruner(name: str) -> Callable[[Pruner], Pruner]:
    """Registers a layer-wise sparsity allocation under ``name``.

    Args:
        name: Registry key, as accepted by :func:`get_pruner`.

    Returns:
        A decorator that registers the function and returns it unchanged.

    Raises:
        ValueError: If ``name`` is already registered.
    """

    def decorator(fn: Pruner) -> Pruner:
        if name in _PRUNERS:
            raise ValueError(f"pruner {name!r} is already registered")
        _PRUNERS[name] = fn
        return fn

    return decorator


def list_pruners() -> list[str]:
    """Returns the registered pruner names, sorted."""
    return sorted(_PRUNERS)


def get_pruner(name: str) -> Pruner:
    """Looks up a pruner by name.

    Args:
        name: One of :func:`list_pruners`.

    Returns:
        The pruner function.

    Raises:
        ValueError: If ``name`` is not registered; the message lists the valid names.
    """
    try:
        return _PRUNERS[name]
    except KeyError:
        raise ValueError(f"unknown pruner {name!r}; valid names: {', '.join(list_pruners())}") from None


def lamp_scores(weight: Tensor, mask: Tensor | None = None) -> Tensor:
    """Computes the LAMP score of every weight of one layer.

    ``score(u) = w[u]**2 / sum(w[v]**2 for v >= u)`` with the weights sorted by ascending magnitude, i.e. a reverse
    cumulative sum over the sorted squares. Equal magnitudes are ordered by position: the one with the lower flat
    index sorts last, so it gets the larger score and wins the tie. Hence the layer's largest weight always scores
    exactly 1 and LAMP keeps at least one weight per layer whenever it keeps at least as many weights as there are
    layers.

    Args:
        weight: The layer's weight, any shape.
        mask: Surviving weights (True = keep). Pruned weights are left out of every denominator and score 0.

    Returns:
        Float64 scores, same shape as ``weight``. A layer whose surviving weights are all zero scores 0 everywhere.
    """
    squares = weight.detach().reshape(-1).to(torch.float64).square()
    if mask is not None:
        squares = torch.where(mask.reshape(-1).bool(), squares, torch.zeros_like(squares))
    n = squares.numel()
    # Sort the reversed vector so that, among equal magnitudes, higher flat indices come first.
    order = (n - 1) - torch.sort(squares.flip(0), stable=True).indices
    sorted_squares = squares[order]
    tail_sums = sorted_squares.flip(0).cumsum(0).flip(0)  # tail_sums[j] = sum of sorted_squares[j:]
    sorted_scores = torch.where(tail_sums > 0, sorted_squares / tail_sums.clamp_min(torch.finfo(torch.float64).tiny), 0)
    scores = torch.empty_like(squares)
    scores[order] = sorted_scores
    return scores.reshape(weight.shape)


def _magnitude_per_layer(weights: Sequence[Tensor], masks: Sequence[Tensor], counts: Sequence[int]) -> list[Tensor]:
    """Keeps the ``counts[i]`` largest-magnitude surviving weights of layer ``i``."""
    return [keep_top_k([w.abs()], [m], k)[0] for w, m, k in zip(weights, masks, counts, strict=True)]


def _survivors(masks: Sequence[Tensor]) -> list[int]:
    return [int(m.sum()) for m in masks]


@register_pruner("global")
def global_pruner(weights: Sequence[Tensor], masks: Sequence[Tensor], n_keep: int) -> list[Tensor]:
    """Global magnitude pruning: one magnitude threshold over all prunable weights."""
    return keep_top_k([w.abs() for w in weights], masks, n_keep)


@register_pruner("lamp")
def lamp_pruner(weights: Sequence[Tensor], masks: Sequence[Tensor], n_keep: int) -> list[Tensor]:
    """LAMP: keeps the globally top-scored weights, scores from :func:`lamp_scores`."""
    return keep_top_k([lamp_scores(w, m) for w, m in zip(weights, masks, strict=True)], masks, n_keep)


@register_pruner("uniform+")
def uniform_plus_pruner(weights: Sequence[Tensor], masks: Sequence[Tensor], n_keep: int) -> list[Tensor]:
    """Uniform+ (Gale et al., 2019): the same fraction of the surviving weights is pruned in every layer, except that
    the first layer stays dense when it is a convolution and the last layer (the classifier) keeps at least 20% of
    its weights; what the classifier cannot give up is taken uniformly from the layers in between.

    Raises:
        PrunerLimitError: If those two exceptions make ``n_keep`` unreachable.
    """
    survivors = _survivors(masks)
    n_layers = len(weights)
    if n_layers == 0:
        return []
    first_dense = n_layers > 1 and weights[0].dim() == 4
    prunable = list(range(1 if first_dense else 0, n_layers))
    last = n_layers - 1
    num, den = UNIFORM_PLUS_LAST_LAYER_MIN_DENSITY
    last_min = min(survivors[last], -(-weights[last].numel() * num // den))  # ceil, in integers

    n_fixed = sum(survivors) - sum(survivors[i] for i in prunable)  # the dense first conv
    if n_keep < n_fixed + last_min:
        total = sum(w.numel() for w in weights)
        rules = "the first conv dense and " if first_dense else ""
        raise PrunerLimitError(
            f"uniform+ cannot keep only {n_keep} of {total} weights (sparsity {1 - n_keep / total:.4f}): it keeps "
            f"{rules}>= 20% of the classifier, so at most sparsity {1 - (n_fixed + last_min) / total:.4f} is reachable"
        )
    pool = sum(survivors[i] for i in prunable)
    frac_keep = (n_keep - n_fixed) / pool if pool else 1.0
    counts = list(survivors)
    if frac_keep * survivors[last] >= last_min:
        counts_rest = apportion(
            [frac_keep * survivors[i] for i in prunable], [survivors[i] for i in prunable], n_keep - n_fixed
        )
        for i, c in zip(prunable, counts_rest, strict=True):
            counts[i] = c
    else:
        middle = prunable[:-1]
        budget = n_keep - n_fixed - last_min
        middle_pool = sum(survivors[i] for i in middle)
        frac_middle = budget / middle_pool if middle_pool else 1.0
        counts_middle = apportion([frac_middle * survivors[i] for i in middle], [survivors[i] for i in middle], budget)
        for i, c in zip(middle, counts_middle, strict=True):
            counts[i] = c
        counts[last] = last_min
    return _magnitude_per_layer(weights, masks, counts)


def erk_scales(weights: Sequence[Tensor]) -> list[float]:
    """Erdős–Rényi-Kernel scale of each layer: sum of the weight's dimensions (conv: out + in + kh + kw, linear:
    out + in). The ERK density of a layer is proportional to ``scale / numel``."""
    return [float(sum(w.shape)) for w in weights]


@register_pruner("erk")
def erk_pruner(weights: Sequence[Tensor], masks: Sequence[Tensor], n_keep: int) -> list[Tensor]:
    """Erdős–Rényi-Kernel: each layer keeps ``c * erk_scale`` weights, ``c`` chosen so the total is ``n_keep``.

    A layer that would keep more than its surviving weights is made dense and ``c`` is recomputed over the others,
    one layer at a time (largest overflow first), as in the LAMP reference code. Within a layer, the
    largest-magnitude weights are kept.
    """
    survivors = _survivors(masks)
    scales = erk_scales(weights)
    dense: set[int] = set()
    free = [i for i, s in enumerate(survivors) if s > 0]
    while True:
        budget = n_keep - sum(survivors[i] for i in dense)
        scale_sum = sum(scales[i] for i in free)
        c = budget / scale_sum if scale_sum else 0.0
        overflow = [(c * scales[i] / survivors[i], -i) for i in free if c * scales[i] > survivors[i]]
        if not overflow:
            break
        worst = -max(overflow)[1]
        dense.add(worst)
        free.remove(worst)
    targets = [float(survivors[i]) if i in dense else c * scales[i] if i in free else 0.0 for i in range(len(weights))]
    return _magnitude_per_layer(weights, masks, apportion(targets, survivors, n_keep))
