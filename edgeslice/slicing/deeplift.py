"""DeepLIFT (rescale rule) attributions of every observed channel in one forward/backward pass.

captum's :class:`~captum.attr.LayerDeepLift` attributes to one layer per call. Here captum's own
:class:`~captum.attr.DeepLift` hooks (the rescale rule on every supported non-linearity) are installed once, the
inputs and their references run as one batch ``[x; x_ref]``, hooks keep every observed layer's output, and one
``autograd.grad`` of the target logits gives every layer's multipliers at once. Per sample and channel the
attribution is ``Σ_space (a − a_ref) · m``, exactly what ``LayerDeepLift(model, layer)`` returns summed over space.

captum applies the rescale rule only to ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, MaxPool and Softmax modules.
Everything else (Hardswish, Hardsigmoid, SiLU, the squeeze-excite multiply, functional activations) back-propagates
plain gradients, so on MobileNetV3-style models the attributions are approximate: they no longer sum to the change
of the output (see :func:`completeness_gap`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from ..torchutil import eval_mode
from .observe import Layer

BASELINES = ("zero", "mean")


@contextlib.contextmanager
def rescale_rules(model: nn.Module) -> Iterator[None]:
    """Install captum's DeepLIFT hooks (rescale rule) on every supported non-linearity of ``model``.

    While active, a backward pass through a batch ``[x; x_ref]`` (inputs first, references second, equal halves)
    yields DeepLIFT multipliers instead of gradients.
    """
    from captum.attr import DeepLift
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    dl = DeepLift(model)
    model.apply(dl._register_hooks)
    try:
        yield
    finally:
        dl._remove_hooks([])
        # captum leaves the last forward's tensors on modules whose backward hook did not run (upstream of every
        # observed layer); drop them so they neither leak memory nor travel with deepcopy.
        for module in model.modules():
            if type(module) in SUPPORTED_NON_LINEAR:
                for attr in ("input", "output", "input_ref"):
                    if isinstance(module.__dict__.get(attr), torch.Tensor):
                        delattr(module, attr)


def channel_attributions(
    model: nn.Module,
    layers: list[Layer],
    x: torch.Tensor,
    target: torch.Tensor,
    baseline: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """DeepLIFT attribution of every observed channel for every sample, in one forward/backward.

    Args:
        model: the model (evaluated in eval mode; its mode is restored).
        layers: observed layers (from :func:`~edgeslice.slicing.observe.find_layers`).
        x: inputs as the model takes them, (B, ...).
        target: the class whose logit is explained, (B,) int64.
        baseline: the reference input, broadcastable to ``x`` (e.g. (1, C, H, W)); zeros when None.

    Returns:
        (attributions, activations): layer name → (B, N) attribution summed over space, and layer name → the
        layer's output for ``x`` (B, N, ...), detached.

    Example:
        >>> attr, _ = channel_attributions(model, find_layers(model, x[:1]), x, y)
    """
    ref = torch.zeros_like(x) if baseline is None else baseline.to(x).expand_as(x)
    batch = len(x)
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_m, _i, out):
            captured[name] = out
            return out.clone()  # downstream in-place activations must not overwrite what we keep

        return hook

    handles = [modules[la.observe].register_forward_hook(hook_for(la.name)) for la in layers]
    try:
        with eval_mode(model), torch.enable_grad(), rescale_rules(model):
            both = torch.cat([x, ref]).requires_grad_(True)
            logits = model(both)  # (2B, classes)
            tgt = target.to(logits.device).repeat(2)
            # As captum does: the objective sums the target logits of inputs *and* references (the MaxPool and
            # Softmax rules mix the two halves' gradients).
            objective = logits.gather(1, tgt.unsqueeze(1)).sum()
            outs = [captured[la.name] for la in layers]
            grads = torch.autograd.grad(objective, outs)
    finally:
        for h in handles:
            h.remove()
    attributions, activations = {}, {}
    with torch.no_grad():
        for la, out, g in zip(layers, outs, grads, strict=True):
            a, a_ref = out[:batch], out[batch:]
            contrib = (a - a_ref) * g[:batch]  # (B, N, ...)
            attributions[la.name] = contrib.flatten(2).sum(2) if contrib.dim() > 2 else contrib
            activations[la.name] = a.detach()
    return attributions, activations


def mean_input(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The ``mean`` DeepLIFT baseline: the per-pixel mean of the (prepared) calibration images, (1, C, H, W).

    An input-space mean image over all classes pooled, not a per-channel constant: after normalisation the
    per-channel mean is ~0 and would repeat the ``zero`` baseline.
    """
    total, n = None, 0
    for x, _ in batches:
        x = x.to(device)
        if prepare is not None:
            x = prepare(x)
        s = x.to(torch.float64).sum(0, keepdim=True)
        total = s if total is None else total + s
        n += len(x)
    if total is None or n == 0:
        raise ValueError("the calibration set is empty: no mean baseline")
    return (total / n).to(torch.float32)


def completeness_gap(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor | None = None
) -> dict[str, float]:
    """How far captum's DeepLIFT input attributions are from summing to f(x)_t − f(x_ref)_t (completeness).

    Exact (up to rounding) when every non-linearity is one captum handles; Hardswish/Hardsigmoid and the
    squeeze-excite multiply break it.

    Returns:
        ``median_rel`` / ``max_rel``: |Σ attributions − Δf| / |Δf| over the samples, and ``median_abs_delta_f``.
    """
    from captum.attr import DeepLift

    ref = torch.zeros_like(x) if baseline is None else baseline.to(x).expand_as(x).contiguous()
    with eval_mode(model), _quiet():
        _, delta = DeepLift(model).attribute(x, baselines=ref, target=target, return_convergence_delta=True)
        with torch.no_grad():
            out = model(torch.cat([x, ref]))
    idx = target.unsqueeze(1)
    change = (out[: len(x)].gather(1, idx) - out[len(x) :].gather(1, idx)).squeeze(1).double()
    rel = delta.detach().double().abs() / change.abs().clamp_min(1e-12)
    return {
        "median_rel": float(rel.median()),
        "max_rel": float(rel.max()),
        "median_abs_delta_f": float(change.abs().median()),
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
