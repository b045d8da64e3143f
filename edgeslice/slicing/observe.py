"""Where a neuron is observed: the prunable layers of a model and the module whose output carries each one.

A neuron is an output channel of a Conv2d or Linear layer. It is observed after the normalisation and activation
that follow the layer (timm's ``BatchNormAct2d`` returns post-activation values), because that is what the next
layers consume. The classifier is never sliced: its outputs are the classes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..torchutil import classifier_names as classifier_names  # re-exported: the old import path
from ..torchutil import eval_mode as eval_mode
from ..torchutil import pool as pool

_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.PReLU,
)


@dataclass(frozen=True)
class Layer:
    """A sliceable layer.

    Attributes:
        name: module name of the Conv2d/Linear.
        observe: module name whose output carries this layer's channels (the layer itself, its norm, or its act).
        channels: number of output channels.
    """

    name: str
    observe: str
    channels: int


#: Parameter-free element-wise modules a neuron may pass through before it is observed (timm's own activation
#: classes are matched by module path below, so new timm activations need no entry here).
_NOT_ELEMENTWISE = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.GLU, nn.MultiheadAttention)


def _is_channelwise(module: nn.Module, channels: int) -> bool:
    """Whether ``module`` maps each channel on its own (BatchNorm, activations, scalar or per-channel affines).

    Cross-channel normalisations (LayerNorm, GroupNorm, RMSNorm) are not: they mix the channels a restructure
    would separate.
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features == channels
    if list(module.children()) or isinstance(module, _NOT_ELEMENTWISE + (nn.Conv2d, nn.Linear)):
        return False
    if "norm" in type(module).__name__.lower():
        return False
    params = list(module.parameters(recurse=False))
    if not params:
        path = type(module).__module__
        return isinstance(module, _ACTIVATIONS) or path.startswith(("torch.nn.modules.activation", "timm.layers.activ"))
    # e.g. timm's LearnableAffineBlock (scalar scale and bias), LayerScale2d (one gain per channel)
    return all(p.numel() in (1, channels) for p in params)


def _autograd_consumers(output: torch.Tensor) -> dict[object, list[object]]:
    """Forward edges of the autograd graph that produced ``output``: node → the nodes that consume its result."""
    consumers: dict[object, list[object]] = {}
    stack, seen = [output.grad_fn], {output.grad_fn}
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None or type(nxt).__name__ == "AccumulateGrad":
                continue
            consumers.setdefault(nxt, []).append(node)
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return consumers


def _single_path(end: object, start: object, consumers: dict[object, list[object]], limit: int = 12) -> bool:
    """Whether ``end`` is reached from ``start`` through one chain of single-input, single-consumer nodes."""
    node = end
    for _ in range(limit):
        if node is start:
            return True
        preds = [n for n, _ in node.next_functions if n is not None and type(n).__name__ != "AccumulateGrad"]
        if len(preds) != 1 or len(consumers.get(preds[0], [])) != 1:
            return False
        node = preds[0]
    return False


def _next_step(node, shape, channels, by_input, calls, modules, consumers) -> str | None:
    """The channel-wise module that alone consumes ``node`` (same shape), if any."""
    for cand in by_input.get(node, []):
        _, cand_out, cand_shape = calls[cand][0]
        if (
            cand_out is not node
            and cand_shape == shape
            and _is_channelwise(modules[cand], channels)
            and _single_path(cand_out, node, consumers)
        ):
            return cand
    return None


def find_layers(model: nn.Module, example: torch.Tensor) -> list[Layer]:
    """List the sliceable layers of ``model`` in forward order, with their observation points.

    The observation point is found on the traced graph (autograd, one forward pass): from the layer's output,
    follow modules that map each channel on its own (BatchNorm, activations, learnable affines, layer scales) as
    long as each step is the only consumer of the previous one, wherever those modules are registered (a deep
    stem's last conv is followed by the model's ``bn1``/``act1``). Zeroing a channel there is what removing it
    does to every consumer. A layer that does not run exactly once, or whose channels are not on dimension 1
    (channels-last Linear layers inside blocks), is not sliced.

    Args:
        model: the model.
        example: one input batch, used to trace the graph.
    """
    heads = classifier_names(model)
    modules = dict(model.named_modules())
    # keep_alive holds every traced output until the end, so that no autograd node's identity is recycled
    calls, out, keep_alive = _trace_calls(model, modules, example)
    consumers = _autograd_consumers(out) if out.grad_fn is not None else {}
    by_input: dict[object, list[str]] = {}
    for name, rec in calls.items():
        if len(rec) == 1 and rec[0][0] is not None:
            by_input.setdefault(rec[0][0], []).append(name)

    layers: list[Layer] = []
    used: set[str] = set()
    for name, module in modules.items():
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or name in heads:
            continue
        channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        rec = calls.get(name, [])
        # not on the forward path, reused, or channels-last: cannot be observed unambiguously
        if len(rec) != 1 or len(rec[0][2]) < 2 or rec[0][2][1] != channels:
            continue
        if isinstance(module, nn.Linear) and len(rec[0][2]) != 2:
            continue
        observe, before_add = _follow_channelwise(name, channels, by_input, calls, modules, consumers)
        if before_add is not None and observe in used:  # a shortcut projection: its own output, not the sum
            observe = before_add
        used.add(observe)
        layers.append(Layer(name=name, observe=observe, channels=channels))
    return layers


def _trace_calls(
    model: nn.Module, modules: dict[str, nn.Module], example: torch.Tensor
) -> tuple[dict[str, list[tuple[object, object, tuple[int, ...]]]], torch.Tensor, list[torch.Tensor]]:
    """One forward pass of ``model`` on ``example`` with grad, recording every named module's calls.

    Returns:
        Per module, one ``(input grad_fn, output grad_fn, output shape)`` per call; the model's output (the first
        one if it returns several); every traced module output, which the caller keeps while it compares nodes.
    """
    calls: dict[str, list[tuple[object, object, tuple[int, ...]]]] = {}
    inputs: dict[str, list[object]] = {}
    keep_alive: list[torch.Tensor] = []  # node identity must not be recycled during the pass

    def pre_hook(key: str):
        def hook(_m, args):
            x = args[0] if args and isinstance(args[0], torch.Tensor) else None
            inputs.setdefault(key, []).append(x.grad_fn if x is not None else None)

        return hook

    def hook(key: str):
        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                keep_alive.append(out)
                calls.setdefault(key, []).append((inputs[key][len(calls.get(key, []))], out.grad_fn, tuple(out.shape)))

        return hook

    handles = []
    for name, module in modules.items():
        if name:
            handles.append(module.register_forward_pre_hook(pre_hook(name)))
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.enable_grad(), eval_mode(model):
            out = model(example.detach().clone().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    out = out[0] if isinstance(out, (tuple, list)) else out
    return calls, out, keep_alive


def _follow_channelwise(name, channels, by_input, calls, modules, consumers) -> tuple[str, str | None]:
    """From layer ``name``'s output, follow the channel-wise modules that alone consume it, one after the other.

    Returns:
        The last module reached (the observation point) and, if the path went through a residual sum, the module
        reached just before it (else None).
    """
    observe, node, shape = name, calls[name][0][1], calls[name][0][2]
    before_add = None
    while node is not None and len(consumers.get(node, [])) == 1:
        step = _next_step(node, shape, channels, by_input, calls, modules, consumers)
        if step is None:
            # A residual sum followed by its activation (ResNet's ``x += shortcut; x = act2(x)``): the
            # activation is what the next layers read; every addend is a member of the same coupled group.
            (add,) = consumers[node]
            if type(add).__name__ != "AddBackward0" or len(consumers.get(add, [])) != 1:
                break
            step = _next_step(add, shape, channels, by_input, calls, modules, consumers)
            if step is None:
                break
            before_add = observe
        observe, node = step, calls[step][0][1]
    return observe, before_add


@contextlib.contextmanager
def channel_masks(
    model: nn.Module,
    layers: list[Layer],
    keep: dict[str, torch.Tensor],
    *,
    extra: dict[str, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Zero the outputs of the channels that ``keep`` marks False, at each layer's observation point.

    This is the "masked model" of the paper's RQ1 and the reference a physically restructured model must equal.

    Args:
        model: the model (its modules get forward hooks while the context is open).
        layers: its sliceable layers.
        keep: layer name → (N,) bool, the channels to keep.
        extra: module name → (C,) bool: also zero these modules' output channels (the per-channel norms a
            restructure removes channels from after a concatenation, see
            :attr:`~edgeslice.restructure.RestructureReport.norm_keep`).
    """
    modules = dict(model.named_modules())
    handles = []
    points = [(layer.observe, keep[layer.name]) for layer in layers if layer.name in keep]
    points += list((extra or {}).items())
    for observe, mask in points:
        mask = mask.to(torch.bool)
        if bool(mask.all()):
            continue

        def hook(_m, _i, out, mask=mask):
            shape = (1, -1) + (1,) * (out.dim() - 2)
            return out * mask.to(device=out.device, dtype=out.dtype).view(shape)

        handles.append(modules[observe].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
