"""Exact channel freezing: which tensors a channel owns, which of them may train, and keeping the rest bit-identical.

A *channel* is an output channel of a sliceable Conv2d/Linear (see :func:`edgeslice.slicing.find_layers`). Its
parameters are the **output-side slices** of the layer that produces it and of that layer's normalisation:

- the layer's ``weight[i]`` (a conv's ``(in/groups, kh, kw)`` filter, a linear layer's row) and ``bias[i]``;
- the BatchNorm that consumes the layer's output directly (found by tracing, not by name): ``weight[i]``,
  ``bias[i]``, ``running_mean[i]``, ``running_var[i]``.

So a **depthwise** conv's channel i owns its single ``(1, kh, kw)`` filter and its BN entries, and nothing of the
pointwise conv that feeds it (that conv's channel i is a channel of its own, with its own index bit). A
**squeeze-excite** block has two sliced layers, ``conv_reduce`` and ``conv_expand``; each owns its output rows and
bias entries (no BN follows them). Input-side weights (``W[:, i]`` of the next layer) belong to the *consumer's*
channels, never to channel i. The classifier's rows (one per class) are handled separately; parameters that belong
to no channel and not to the classifier ("orphans", none in timm MobileNetV3 or the MLP) follow one flag.

Gradient masking alone does not freeze anything: AdamW's decoupled weight decay and SGD's momentum and weight
decay move rows whose gradient is zero, and BatchNorm updates running statistics of every channel in train mode.
:class:`ExactFreezer` therefore (1) takes fully frozen parameters out of the optimizer (``requires_grad=False``),
(2) zeroes the gradient of frozen rows so the optimizer's statistics only see trainable ones, and (3) restores a
saved copy of every frozen slice — parameters and BN running statistics — after every optimizer step. A BN's
``num_batches_tracked`` counter is restored when all of its channels are frozen (it only matters with
``momentum=None``). Restoring copies the saved bits, so frozen slices stay bit-identical, whatever the optimizer.

A frozen channel is a fixed function at inference: its BN normalises with the saved running statistics. In train
mode BN would normalise it with the batch's statistics instead, so the rest of the network would be trained against
a function the deployed model never computes (measured: MobileNetV3 learning Fashion-MNIST 5-9 with task 0-4's
critical channels frozen reached 65% on the new classes this way, against 90% for plain retraining). By default
(``frozen_bn="eval"``) the freezer therefore makes every BN compute its frozen channels in eval mode while training
(the module runs once more with ``training=False`` and those channels are taken from that output); the trainable
channels keep batch statistics. ``frozen_bn="batch"`` keeps plain train-mode BN.

Only torch is imported: this module runs on the device.

Example:
    >>> groups = channel_groups(model, layers, example)
    >>> plan = make_plan(model, groups, trainable={g.layer: index.critical[g.layer] for g in groups})
    >>> with ExactFreezer(model, plan) as freezer:
    ...     for x, y in batches:
    ...         loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
    ...         freezer.restore_()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_BN = nn.modules.batchnorm._BatchNorm
_BN_ROWS = ("weight", "bias", "running_mean", "running_var")
FROZEN_BN = ("eval", "batch")


@dataclass(frozen=True)
class ChannelGroup:
    """The tensors that hold one sliceable layer's output channels.

    Attributes:
        layer: module name of the Conv2d/Linear.
        norm: module name of the BatchNorm that normalises its output, or None.
        channels: number of output channels.
    """

    layer: str
    norm: str | None
    channels: int

    def tensor_names(self, model: nn.Module) -> list[str]:
        """State names (parameters and BN running statistics) whose dim 0 indexes this group's channels."""
        modules = dict(model.named_modules())
        names = [f"{self.layer}.{a}" for a in ("weight", "bias") if getattr(modules[self.layer], a, None) is not None]
        if self.norm is not None:
            bn = modules[self.norm]
            names += [f"{self.norm}.{a}" for a in _BN_ROWS if getattr(bn, a, None) is not None]
        return names


def _layer_specs(layers: Iterable[Any]) -> list[tuple[str, int]]:
    """(name, channels) from Layer objects or index layer dicts."""
    out = []
    for la in layers:
        if isinstance(la, Mapping):
            out.append((str(la["name"]), int(la["channels"])))
        else:
            out.append((la.name, int(la.channels)))
    return out


def channel_groups(model: nn.Module, layers: Iterable[Any], example: torch.Tensor) -> list[ChannelGroup]:
    """Find each layer's BatchNorm by tracing one forward pass: the BN whose input *is* the layer's output tensor.

    Args:
        model: the model.
        layers: :class:`~edgeslice.slicing.Layer` objects or index layer dicts (``name``, ``channels``).
        example: one input batch (normalised).

    Raises:
        ValueError: a layer is missing from the model or has another channel count.
    """
    specs = _layer_specs(layers)
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    bn_inputs: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, channels in specs:
        module = modules.get(name)
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise ValueError(f"layer {name!r} is not a Conv2d/Linear of this model")
        n_out = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        if n_out != channels:
            raise ValueError(f"layer {name!r} has {n_out} channels, expected {channels}")
        handles.append(module.register_forward_hook(lambda _m, _i, out, name=name: outputs.setdefault(name, out)))
    for name, module in modules.items():
        if isinstance(module, _BN):
            handles.append(
                module.register_forward_pre_hook(
                    lambda _m, inp, name=name: bn_inputs.setdefault(name, []).append(inp[0])
                )
            )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    groups = []
    for name, channels in specs:
        out = outputs.get(name)
        norms = [bn for bn, seen in bn_inputs.items() if out is not None and any(t is out for t in seen)]
        norm = norms[0] if len(norms) == 1 and modules[norms[0]].num_features == channels else None
        groups.append(ChannelGroup(layer=name, norm=norm, channels=channels))
    return groups


def classifier_modules(model: nn.Module) -> list[str]:
    """Module names of the classifier's Linear/Conv layers (timm ``get_classifier``; else the last Linear)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and head is not None and any(module is m for m in head.modules()):
            names.append(name)
    if not names:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    return names


@dataclass
class TrainPlan:
    """Which rows of which tensors may change; every other row is restored after each step.

    Attributes:
        masks: state name (parameter or BN running statistic) → (dim 0,) bool, True = may change. Tensors without
            an entry (other buffers, e.g. ``num_batches_tracked`` of partly trainable BNs) are left alone.
        row_numel: parameter name → elements per dim-0 row, for parameter counts.
        orphans: parameters that belong to no channel group and not to the classifier.
        info: how the plan was made (JSON-able).
    """

    masks: dict[str, torch.Tensor]
    row_numel: dict[str, int]
    orphans: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def trainable_parameters(self) -> int:
        """Number of parameter elements allowed to change."""
        return int(sum(int(self.masks[n].sum()) * k for n, k in self.row_numel.items()))

    @property
    def total_parameters(self) -> int:
        return int(sum(self.masks[n].numel() * k for n, k in self.row_numel.items()))

    @property
    def tpr(self) -> float:
        """Training parameter ratio (paper Table 6): trainable / all parameters."""
        return self.trainable_parameters / max(self.total_parameters, 1)

    def summary(self) -> dict[str, Any]:
        return {
            "trainable_parameters": self.trainable_parameters,
            "total_parameters": self.total_parameters,
            "tpr": self.tpr,
            "orphans": list(self.orphans),
            **self.info,
        }


def make_plan(
    model: nn.Module,
    groups: list[ChannelGroup],
    trainable: Mapping[str, torch.Tensor],
    *,
    classifier: torch.Tensor | bool = True,
    others: bool = False,
    info: dict[str, Any] | None = None,
) -> TrainPlan:
    """Build a :class:`TrainPlan` from per-layer channel masks.

    Args:
        model: the model (its current shapes).
        groups: from :func:`channel_groups`.
        trainable: layer name → (channels,) bool, True = the channel trains. Every group needs an entry.
        classifier: the classifier rows that train: a (num_classes,) bool mask, or True/False for all/none.
        others: whether orphan parameters (in no group, not the classifier) train.
        info: stored in the plan's summary.

    Raises:
        ValueError: a group has no mask, or a mask has the wrong length.
    """
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    masks: dict[str, torch.Tensor] = {}
    row_numel = {n: (p[0].numel() if p.dim() > 0 else 1) for n, p in params.items()}
    owned: set[str] = set()
    for g in groups:
        if g.layer not in trainable:
            raise ValueError(f"no trainable mask for layer {g.layer!r}")
        mask = torch.as_tensor(trainable[g.layer], dtype=torch.bool).cpu()
        if mask.shape != (g.channels,):
            raise ValueError(f"mask for {g.layer!r} has shape {tuple(mask.shape)}, expected ({g.channels},)")
        for name in g.tensor_names(model):
            masks[name] = mask.clone()
            owned.add(name)
    heads = classifier_modules(model)
    for head in heads:
        for attr in ("weight", "bias"):
            name = f"{head}.{attr}"
            if name not in params:
                continue
            rows = params[name].shape[0]
            if isinstance(classifier, bool):
                masks[name] = torch.full((rows,), classifier, dtype=torch.bool)
            else:
                cmask = torch.as_tensor(classifier, dtype=torch.bool).cpu()
                if cmask.shape != (rows,):
                    raise ValueError(f"classifier mask has shape {tuple(cmask.shape)}, expected ({rows},)")
                masks[name] = cmask.clone()
            owned.add(name)
    orphans = sorted(n for n in params if n not in owned)
    for name in orphans:
        p = params[name]
        masks[name] = torch.full((p.shape[0] if p.dim() > 0 else 1,), others, dtype=torch.bool)
    for name, buf in buffers.items():
        module_name, _, attr = name.rpartition(".")
        if attr == "num_batches_tracked":
            norm_masks = [masks.get(f"{module_name}.{a}") for a in ("running_mean", "running_var")]
            norm_masks = [m for m in norm_masks if m is not None]
            if norm_masks and not any(bool(m.any()) for m in norm_masks):
                masks[name] = torch.zeros(1, dtype=torch.bool)
        elif name not in masks:
            masks[name] = torch.full((buf.shape[0] if buf.dim() > 0 else 1,), others, dtype=torch.bool)
    return TrainPlan(masks=masks, row_numel=row_numel, orphans=orphans, info=dict(info or {}))


class ExactFreezer:
    """Keep every frozen row of a :class:`TrainPlan` bit-identical while the model trains.

    Use as a context manager around the training loop and call :meth:`restore_` after every ``optimizer.step()``.
    Build the optimizer inside the context from ``[p for p in model.parameters() if p.requires_grad]``: fully
    frozen parameters are taken out (no optimizer state for them, which also saves device memory).
    """

    def __init__(self, model: nn.Module, plan: TrainPlan, *, frozen_bn: str = "eval") -> None:
        """Args:
        model: the model whose frozen rows are kept.
        plan: which rows may change.
        frozen_bn: ``eval`` (frozen channels use their running statistics in train mode too, as at inference)
            or ``batch`` (plain train-mode BatchNorm).
        """
        if frozen_bn not in FROZEN_BN:
            raise ValueError(f"unknown frozen_bn {frozen_bn!r}; valid: {', '.join(FROZEN_BN)}")
        self.model = model
        self.plan = plan
        self.frozen_bn = frozen_bn
        self._patched: list[nn.Module] = []
        self._saved: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor]] = []
        self._hooks: list[Any] = []
        self._requires_grad: dict[str, bool] = {}
        self._attached = False

    def __enter__(self) -> ExactFreezer:
        self.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def attach(self) -> None:
        """Snapshot the frozen slices, mask their gradients, and take fully frozen parameters out of training."""
        if self._attached:
            return
        modules = dict(self.model.named_modules())
        params = dict(self.model.named_parameters())
        state = {**dict(self.model.named_buffers()), **params}
        for name, mask in self.plan.masks.items():
            if name not in state:
                raise ValueError(f"plan names {name!r}, which the model does not have")
            tensor = state[name]
            frozen = ~mask.to(tensor.device)
            if not bool(frozen.any()):
                continue
            module_name, _, attr = name.rpartition(".")
            module = modules[module_name]
            if tensor.dim() == 0 or bool(frozen.all()):
                self._saved.append((module, attr, None, tensor.detach().clone()))
            else:
                idx = frozen.nonzero().flatten()
                self._saved.append((module, attr, idx, tensor.detach().index_select(0, idx).clone()))
            if name in params:
                p = params[name]
                self._requires_grad[name] = p.requires_grad
                if bool(frozen.all()):
                    p.requires_grad_(False)
                elif p.requires_grad:
                    keep = mask.to(device=p.device, dtype=p.dtype).view((-1,) + (1,) * (p.dim() - 1))
                    self._hooks.append(p.register_hook(lambda g, keep=keep: g * keep.to(g.device, g.dtype)))
        if self.frozen_bn == "eval":
            for name, module in modules.items():
                mask = self.plan.masks.get(f"{name}.running_mean")
                if isinstance(module, _BN) and mask is not None and not bool(mask.all()):
                    _patch_bn_(module, ~mask)
                    self._patched.append(module)
        self._attached = True

    @torch.no_grad()
    def restore_(self) -> None:
        """Write the saved frozen slices back (call after every optimizer step and after train-mode forwards)."""
        for module, attr, idx, saved in self._saved:
            # Looked up by attribute each time: .to()/memory-format changes replace buffer objects.
            tensor = getattr(module, attr)
            if idx is None:
                tensor.copy_(saved.to(tensor.device))
            else:
                tensor.index_copy_(0, idx.to(tensor.device), saved.to(tensor.device, tensor.dtype))

    @torch.no_grad()
    def max_drift(self) -> float:
        """Largest |current − saved| over the frozen slices (0.0 right after :meth:`restore_`)."""
        worst = 0.0
        for module, attr, idx, saved in self._saved:
            tensor = getattr(module, attr)
            now = tensor if idx is None else tensor.index_select(0, idx.to(tensor.device))
            if saved.numel():
                worst = max(worst, float((now.detach().cpu().double() - saved.cpu().double()).abs().max()))
        return worst

    def detach(self) -> None:
        """Remove the gradient hooks and BN patches, and give parameters back their ``requires_grad`` flags."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for module in self._patched:
            del module.forward  # the instance attribute shadowed the class's forward
        self._patched.clear()
        params = dict(self.model.named_parameters())
        for name, flag in self._requires_grad.items():
            params[name].requires_grad_(flag)
        self._requires_grad.clear()
        self._saved.clear()
        self._attached = False

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer should get (those with at least one trainable row)."""
        return [p for p in self.model.parameters() if p.requires_grad]


def _patch_bn_(module: nn.Module, frozen: torch.Tensor) -> None:
    """In train mode, compute the ``frozen`` channels of this BN (or BN+act, e.g. timm's BatchNormAct2d) as in eval
    mode, from the running statistics; the other channels keep batch statistics. BN works per channel, so the two
    outputs can be mixed channel by channel."""
    original = module.forward  # bound to the class's forward
    every = bool(frozen.all())

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return original(x)
        module.training = False
        try:
            y_eval = original(x)
        finally:
            module.training = True
        if every:
            return y_eval
        y = original(x)  # batch statistics; updates the running statistics (frozen entries are restored later)
        mask = frozen.to(y.device).view((1, -1) + (1,) * (y.dim() - 2))
        return torch.where(mask, y_eval, y)

    module.forward = forward
