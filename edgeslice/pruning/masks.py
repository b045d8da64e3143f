"""Unstructured pruning masks: which weights are prunable, computing masks, applying them and making them permanent.

Mask mechanism: :func:`apply_masks_` uses :func:`torch.nn.utils.prune.custom_from_mask`, i.e. ``weight`` becomes
``weight_orig * weight_mask`` recomputed by a forward pre-hook. The gradient of a masked entry is therefore zero and,
whatever the optimizer does to ``weight_orig`` (momentum, weight decay), the effective ``weight`` stays zero there.
The masked entries of ``weight_orig`` are zeroed too, so nothing stale can leak back. :func:`make_permanent_` turns
the reparametrization back into a plain ``weight`` parameter holding the zeros, with the original state-dict layout.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from edgeslice.pruning import apply_masks_, compute_masks, make_permanent_, sparsity_report
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    >>> apply_masks_(model, compute_masks(model, 0.5, "lamp"))
    >>> make_permanent_(model)
    >>> sparsity_report(model)["total"]["density"]
    0.5
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from .allocators import get_pruner

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

# Set on a module by apply_masks_ so that make_permanent_ can restore the original parameter order.
_PARAM_ORDER_ATTR = "_edgeslice_param_order"


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Lists the modules whose ``weight`` is prunable: every ``nn.Conv2d`` and ``nn.Linear``.

    Depthwise, squeeze-excite and classifier layers are included; biases and normalisation parameters never are.

    Args:
        model: Any model.

    Returns:
        ``(module name, module)`` pairs in ``model.named_modules()`` order.
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]


def is_masked(module: nn.Module) -> bool:
    """Whether ``module`` carries a pruning mask (``weight_orig`` × ``weight_mask``)."""
    return "weight_orig" in module._parameters and isinstance(getattr(module, "weight_mask", None), Tensor)


def _effective_weight(module: nn.Module) -> Tensor:
    """The weight as the next forward pass will see it (``module.weight`` is only refreshed by that pass)."""
    if is_masked(module):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def current_masks(model: nn.Module) -> dict[str, Tensor]:
    """Returns the masks the model carries now.

    A module masked by :func:`apply_masks_` (or any ``torch.nn.utils.prune`` method) reports its ``weight_mask``;
    any other module reports ``weight != 0``, so a model made permanent with :func:`make_permanent_` resumes from
    its sparsity.

    Args:
        model: Any model.

    Returns:
        Boolean masks (True = keep) keyed by module name, same shapes as the weights.
    """
    masks = {}
    for name, module in prunable_weights(model):
        if is_masked(module):
            masks[name] = module.weight_mask.detach().bool()
        else:
            masks[name] = module.weight.detach() != 0
    return masks


def _check_masks(model: nn.Module, masks: dict[str, Tensor], *, complete: bool) -> None:
    shapes = {name: m.weight.shape for name, m in prunable_weights(model)}
    unknown = sorted(set(masks) - set(shapes))
    if unknown:
        raise ValueError(f"masks name modules that are not prunable Conv2d/Linear layers: {unknown}")
    missing = sorted(set(shapes) - set(masks))
    if complete and missing:
        raise ValueError(f"masks are missing prunable layers: {missing}")
    for name, mask in masks.items():
        if mask.shape != shapes[name]:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight has {tuple(shapes[name])}")


def compute_masks(
    model: nn.Module, sparsity: float, pruner: str, *, masks: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Computes unstructured pruning masks reaching ``sparsity`` over all prunable weights.

    Allocation works on the currently surviving weights only: weights pruned in ``masks`` stay pruned. Exactly
    ``round((1 - sparsity) * total)`` weights are kept (``total`` = number of prunable weights, Python ``round``).
    Ties are broken deterministically by position: the earlier layer (``named_modules`` order), then the lower
    index in ``weight.flatten()``, is kept.

    Args:
        model: The model; its weights are read, not changed.
        sparsity: Target fraction of all prunable weights that are zero, in ``[0, 1]``.
        pruner: Allocation name, one of :func:`~edgeslice.pruning.list_pruners`.
        masks: Current masks (True = keep) for every prunable layer. Defaults to :func:`current_masks`.

    Returns:
        Boolean masks (True = keep) keyed by module name, same shapes as the weights.

    Raises:
        ValueError: If ``pruner`` is unknown, ``sparsity`` is outside ``[0, 1]`` or below the current sparsity
            (pruned weights cannot come back), or ``masks`` does not match the model.
        PrunerLimitError: (a ``ValueError``) If the pruner cannot reach the target.
    """
    allocate = get_pruner(pruner)
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if masks is None:
        masks = current_masks(model)
    else:
        _check_masks(model, masks, complete=True)
    layers = prunable_weights(model)
    # Ranking runs on the CPU in float64: deterministic, and MPS has no float64.
    weights = [_effective_weight(m).cpu() for _, m in layers]
    old = [masks[name].detach().to(device="cpu", dtype=torch.bool) for name, _ in layers]
    total = sum(w.numel() for w in weights)
    n_alive = sum(int(m.sum()) for m in old)
    n_keep = round((1.0 - sparsity) * total)
    if n_keep > n_alive:
        raise ValueError(
            f"target sparsity {sparsity:.4f} is below the current sparsity {1 - n_alive / total:.4f}; "
            "pruned weights cannot come back"
        )
    new = allocate(weights, old, n_keep)
    return {name: mask.to(module.weight.device) for (name, module), mask in zip(layers, new, strict=True)}


def refresh_weight(module: nn.Module) -> None:
    # Same recomputation as the prune forward pre-hook, so module.weight is right before the next forward too.
    module.weight = module.weight_orig * module.weight_mask


def apply_masks_(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Zeroes the masked weights in place and keeps them zero through fine-tuning.

    Uses ``torch.nn.utils.prune.custom_from_mask`` (see the module docstring). On a module that is already masked,
    the new mask is combined with the old one (logical and): masks can only remove weights. Optimizers built
    before the call keep working, since ``weight_orig`` is the original ``weight`` parameter object.

    Args:
        model: The model to mask in place.
        masks: Boolean masks (True = keep) keyed by module name; layers not named are left as they are.

    Raises:
        ValueError: If a name is not a prunable layer or a shape does not match its weight.
    """
    _check_masks(model, masks, complete=False)
    modules = dict(prunable_weights(model))
    for name, mask in masks.items():
        module = modules[name]
        if is_masked(module):
            keep = mask.to(module.weight_mask.device).bool() & module.weight_mask.bool()
            module.weight_mask.copy_(keep)
        else:
            setattr(module, _PARAM_ORDER_ATTR, tuple(module._parameters))
            keep = mask.to(module.weight.device).bool()
            prune.custom_from_mask(module, "weight", keep)
        module.weight_orig.data.mul_(module.weight_mask)
        refresh_weight(module)


def make_permanent_(model: nn.Module) -> None:
    """Removes the pruning reparametrization: ``weight`` becomes a plain parameter holding the zeros.

    The equivalent of ``torch.nn.utils.prune.remove`` on every masked layer, except that the parameter order (and so
    the state-dict key order) of the original module is restored. No ``weight_orig``, ``weight_mask`` or pruning
    forward pre-hook is left. Layers that are not masked are untouched.

    Args:
        model: The model to change in place.
    """
    for _, module in prunable_weights(model):
        if not is_masked(module):
            continue
        prune.remove(module, "weight")
        order = getattr(module, _PARAM_ORDER_ATTR, None)
        if order is not None and set(order) == set(module._parameters):
            for key in order:
                module._parameters[key] = module._parameters.pop(key)
        if hasattr(module, _PARAM_ORDER_ATTR):
            delattr(module, _PARAM_ORDER_ATTR)


def sparsity_report(model: nn.Module) -> dict[str, dict]:
    """Counts the surviving (non-zero) prunable weights, per layer and in total.

    Args:
        model: Any model, masked or not.

    Returns:
        ``{"layers": {name: stats}, "total": stats}`` where ``stats`` is
        ``{"n_weights": int, "n_nonzero": int, "density": float}``.
    """
    layers = {}
    for name, module in prunable_weights(model):
        weight = _effective_weight(module)
        layers[name] = _stats(weight.numel(), int(weight.count_nonzero()))
    total = _stats(sum(s["n_weights"] for s in layers.values()), sum(s["n_nonzero"] for s in layers.values()))
    return {"layers": layers, "total": total}


def _stats(n_weights: int, n_nonzero: int) -> dict[str, int | float]:
    return {"n_weights": n_weights, "n_nonzero": n_nonzero, "density": n_nonzero / n_weights if n_weights else 0.0}
