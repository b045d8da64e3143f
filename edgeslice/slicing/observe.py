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


def classifier_names(model: nn.Module) -> set[str]:
    """Module names of the classifier (never sliced, never pruned)."""
    get = getattr(model, "get_classifier", None)
    heads = get() if callable(get) else None
    names = set()
    for name, module in model.named_modules():
        if heads is not None and (module is heads or any(module is m for m in heads.modules())):
            names.add(name)
    if not names:  # not a timm model: the last Linear is the classifier
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        names.update(linears[-1:])
    return names


def _is_unary_follower(module: nn.Module, channels: int) -> bool:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features == channels
    return isinstance(module, _ACTIVATIONS)


def find_layers(model: nn.Module, example: torch.Tensor) -> list[Layer]:
    """List the sliceable layers of ``model`` in forward order, with their observation points.

    The observation point is found from registration order (timm registers ``conv, bn, act`` in forward order) and
    then checked with one forward pass: the candidate must run exactly once and produce ``channels`` channels,
    otherwise the layer's own output is used.

    Args:
        model: the model.
        example: one input batch, used to check the observation points.
    """
    heads = classifier_names(model)
    named = [
        (n, m)
        for n, m in model.named_modules()
        if not isinstance(m, nn.Identity) and not list(m.children()) or isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    candidates: list[tuple[str, str, int]] = []
    for i, (name, module) in enumerate(named):
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or name in heads:
            continue
        channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        observe = name
        j = i + 1
        # Follow norm → activation chains that belong to the same parent block.
        while j < len(named):
            nxt_name, nxt = named[j]
            if nxt_name.startswith(name + "."):  # children of a BatchNormAct2d, e.g. bn1.act
                j += 1
                continue
            same_parent = nxt_name.rpartition(".")[0] == name.rpartition(".")[0] or nxt_name.startswith(observe + ".")
            if same_parent and _is_unary_follower(nxt, channels):
                observe = nxt_name
                j += 1
                if isinstance(nxt, nn.modules.batchnorm._BatchNorm) and _has_fused_act(nxt):
                    break
                continue
            break
        candidates.append((name, observe, channels))

    modules = dict(model.named_modules())
    calls: dict[str, list[int]] = {}

    def hook_for(key: str):
        def hook(_m, _i, out):
            if isinstance(out, torch.Tensor):
                calls.setdefault(key, []).append(out.shape[1] if out.dim() > 1 else -1)

        return hook

    watched = sorted({o for _, o, _ in candidates} | {n for n, _, _ in candidates})
    handles = [modules[k].register_forward_hook(hook_for(k)) for k in watched]
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    finally:
        for h in handles:
            h.remove()
    layers = []
    for name, observe, channels in candidates:
        if calls.get(observe) != [channels]:
            observe = name
        if calls.get(name) != [channels]:
            continue  # not on the forward path (or reused): cannot be observed unambiguously
        layers.append(Layer(name=name, observe=observe, channels=channels))
    return layers


def _has_fused_act(bn: nn.Module) -> bool:
    act = getattr(bn, "act", None)
    return act is not None and not isinstance(act, nn.Identity)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def pool(x: torch.Tensor) -> torch.Tensor:
    """Per-channel feature of a layer output: spatial mean for conv maps. (B, C, ...) → (B, C)."""
    return x.flatten(2).mean(2) if x.dim() > 2 else x


@contextlib.contextmanager
def channel_masks(model: nn.Module, layers: list[Layer], keep: dict[str, torch.Tensor]) -> Iterator[None]:
    """Zero the outputs of the channels that ``keep`` marks False, at each layer's observation point.

    This is the "masked model" of the paper's RQ1 and the reference a physically restructured model must equal.
    """
    modules = dict(model.named_modules())
    handles = []
    for layer in layers:
        if layer.name not in keep:
            continue
        mask = keep[layer.name].to(torch.bool)
        if bool(mask.all()):
            continue

        def hook(_m, _i, out, mask=mask):
            shape = (1, -1) + (1,) * (out.dim() - 2)
            return out * mask.to(device=out.device, dtype=out.dtype).view(shape)

        handles.append(modules[layer.observe].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
