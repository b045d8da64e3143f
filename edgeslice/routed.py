"""The routed head of a class-incremental model: a router over the class statistics picks the task, that task's
trained classifier rows pick the class (:class:`RoutedHead`), and its record in ``model.json`` (:func:`routed_spec`,
:func:`install_routed_`, which :func:`edgeslice.models.load_checkpoint` calls).

Imports torch and the class statistics only: this runs on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .classstats import ClassStats, Tap, feature_width
from .errors import IndexFileError, ModelError
from .torchutil import pool_copy

ROUTED = "routed"
_OFF = 1e4  # additive mask: exp(x − 1e4) is 0 in float32 for any logit a classifier produces


class _TapHook:
    """Forward hook on a tap layer: hands its pooled output to the routed head (a class, so deep copies follow)."""

    def __init__(self, head: RoutedHead, k: int) -> None:
        self.head, self.k = head, k

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.head._tap_values[self.k] = pool_copy(output)


class RoutedHead(nn.Module):
    """Class-incremental classifier: a router picks the task, that task's trained rows pick the class.

    Output ``j`` is ``log p(class j | x) = log p(task(j) | x) + log softmax_{task(j)}(logits)_j`` (so one argmax
    over all classes, and the outputs are log-probabilities), where

    - ``logits = linear(f)`` are the trained classifier's rows: the old tasks' rows read only frozen features and
      keep their function exactly (isolation), the newest task's rows were trained on its data;
    - ``log p(task | x)`` sums, over the task's classes, the posterior of the linear discriminant of the class
      statistics (:class:`ClassStats`, over the frozen features ``f[:, index]`` and the taps' frozen channels,
      which no increment changes).

    The taps are read by forward hooks on their layers (:meth:`attach_`), so the head needs the whole model's
    forward; called on features alone it raises.

    The discriminant alone is a poor classifier for the new classes (it reads only features learnt on the old
    ones), but a good judge of *which task* an input belongs to; within a task the trained rows are far better.
    Classes with ``by_router`` = 1 (task A when :attr:`ClassStats.old_scorer` is ``lda``) are scored within their
    task by the discriminant instead of their rows.
    """

    def __init__(
        self,
        linear: nn.Linear,
        dims: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        task_of: torch.Tensor,
        by_router: torch.Tensor | None = None,
        taps: Sequence[Tap] = (),
    ) -> None:
        super().__init__()
        n_cls = linear.out_features
        d = feature_width(dims, taps)
        if task_of.shape != (n_cls,) or weight.shape != (n_cls, d) or bias.shape != (n_cls,):
            raise IndexFileError("routed head: router and task table do not match the classifier")
        self.linear = linear
        n_tasks = int(task_of.max()) + 1
        mask = torch.zeros(n_tasks, n_cls)
        mask[task_of, torch.arange(n_cls)] = 1.0
        dev = linear.weight.device
        self.register_buffer("router_index", dims.nonzero()[:, 0].to(dev))
        self.register_buffer("router_weight", weight.float().to(dev))
        self.register_buffer("router_bias", bias.float().to(dev))
        self.register_buffer("task_of", task_of.to(torch.int64).to(dev))
        self.register_buffer("task_offset", ((mask - 1.0) * _OFF).to(dev))
        # 1.0 for classes scored within their task by the discriminant instead of the trained rows.
        by = torch.zeros(n_cls) if by_router is None else by_router.float()
        self.register_buffer("by_router", by.to(dev))
        self.tap_layers = [t.layer for t in taps]
        self.tap_channels = [int(t.mask.numel()) for t in taps]
        for k, t in enumerate(taps):
            self.register_buffer(f"tap_index_{k}", t.mask.nonzero()[:, 0].to(dev))
        self._tap_values: dict[int, torch.Tensor] = {}

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def tasks(self) -> list[list[int]]:
        """Class labels of each task, in order."""
        t = self.task_of.tolist()
        return [[c for c, k in enumerate(t) if k == i] for i in range(max(t) + 1)]

    # --- taps ----------------------------------------------------------------------------------------------------
    def attach_(self, model: nn.Module) -> None:
        """Hook the tap layers of ``model`` (the model this head is the classifier of)."""
        self.detach_(model)
        for k, name in enumerate(self.tap_layers):
            try:
                layer = model.get_submodule(name)
            except AttributeError as e:
                raise IndexFileError(f"routed head: the model has no tap layer {name!r}") from e
            layer.register_forward_hook(_TapHook(self, k))

    def detach_(self, model: nn.Module) -> None:
        """Remove this head's tap hooks from ``model``."""
        for m in model.modules():
            for key in [k for k, h in m._forward_hooks.items() if isinstance(h, _TapHook) and h.head is self]:
                del m._forward_hooks[key]
                m._forward_hooks_with_kwargs.pop(key, None)
                m._forward_hooks_always_called.pop(key, None)
        self._tap_values = {}

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        # The router's discriminant values are large (hundreds) and its log-posterior is a difference of them: it
        # runs in float64, so PyTorch and onnxruntime (other summation orders) agree closely on the output.
        logits = self.linear(f).double()
        offset = self.task_offset.double()
        w, b = self.router_weight.double(), self.router_bias.double()
        r = f.index_select(1, self.router_index)
        if self.tap_layers:
            values, self._tap_values = self._tap_values, {}
            if len(values) != len(self.tap_layers):
                raise RuntimeError("routed head: its tap layers did not run (call the model, not the head alone)")
            taps = [values[k].index_select(1, getattr(self, f"tap_index_{k}")) for k in range(len(self.tap_layers))]
            r = torch.cat([r, *taps], 1)
        z = r.double() @ w.T + b
        post = torch.log_softmax(z, dim=1)
        task_post = torch.logsumexp(post[:, None, :] + offset, dim=2)  # (B, T)
        within_rows = logits - torch.logsumexp(logits[:, None, :] + offset, dim=2).index_select(1, self.task_of)
        within_lda = z - torch.logsumexp(z[:, None, :] + offset, dim=2).index_select(1, self.task_of)
        within = within_rows + self.by_router.double() * (within_lda - within_rows)
        return (task_post.index_select(1, self.task_of) + within).float()


def routed_head(linear: nn.Linear, stats: ClassStats, tasks: Sequence[Sequence[int]]) -> RoutedHead:
    """The routed head over ``linear`` with the discriminant of ``stats`` as router; ``tasks``: labels per task.

    With taps, :func:`install_head_` (or :meth:`RoutedHead.attach_`) hooks them on the model.
    """
    task_of = torch.full((linear.out_features,), -1, dtype=torch.int64)
    for i, labels in enumerate(tasks):
        task_of[list(labels)] = i
    if (task_of < 0).any() or len(stats.classes) != linear.out_features:
        raise IndexFileError("routed head: every class needs one task and one row of class statistics")
    w, b = stats.head()
    by_router = torch.zeros(linear.out_features)
    if stats.old_scorer == "lda":
        by_router[list(tasks[0])] = 1.0  # the classes the statistics were sliced with: task A
    return RoutedHead(linear, stats.dims, w, b, task_of, by_router, taps=stats.taps)


def install_head_(model: nn.Module, head: RoutedHead) -> None:
    """Make ``head`` the classifier of ``model`` and hook its taps."""
    set_classifier_(model, head)
    head.attach_(model)


def routed_spec(head: RoutedHead) -> dict[str, Any]:
    """What ``model.json`` records so that :func:`install_routed_` can rebuild the head before loading weights."""
    spec = {"kind": ROUTED, "tasks": head.tasks(), "router_features": int(head.router_index.numel())}
    if head.tap_layers:
        spec["taps"] = [
            {"layer": n, "channels": c, "features": int(getattr(head, f"tap_index_{k}").numel())}
            for k, (n, c) in enumerate(zip(head.tap_layers, head.tap_channels, strict=True))
        ]
    return spec


def install_routed_(model: nn.Module, spec: dict[str, Any]) -> None:
    """Replace ``model``'s Linear classifier by a routed head of ``spec``'s shape (placeholder router tensors)."""
    head = model.get_classifier()
    try:
        tasks = [[int(c) for c in t] for t in spec["tasks"]]
        d = int(spec["router_features"])
        taps_spec = [(str(t["layer"]), int(t["channels"]), int(t["features"])) for t in spec.get("taps", [])]
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"checkpoint sidecar: malformed routed head {e!r}") from e
    if not isinstance(head, nn.Linear) or sorted(c for t in tasks for c in t) != list(range(head.out_features)):
        raise ModelError("checkpoint sidecar: the routed head's tasks do not cover the classifier's classes")
    if not 1 <= d <= head.in_features:
        raise ModelError("checkpoint sidecar: the routed head reads more features than the classifier has")
    if any(not 1 <= f <= c for _, c, f in taps_spec):
        raise ModelError("checkpoint sidecar: a routed head tap reads more channels than its layer has")
    dims = torch.zeros(head.in_features, dtype=torch.bool)
    dims[:d] = True
    taps = []
    for name, c, f in taps_spec:
        mask = torch.zeros(c, dtype=torch.bool)
        mask[:f] = True
        taps.append(Tap(name, mask))
    task_of = torch.empty(head.out_features, dtype=torch.int64)
    for i, t in enumerate(tasks):
        task_of[t] = i
    n = head.out_features
    width = d + sum(f for *_, f in taps_spec)
    routed = RoutedHead(head, dims, torch.zeros(n, width), torch.zeros(n), task_of, taps=taps)
    try:
        install_head_(model, routed)
    except IndexFileError as e:
        raise ModelError(f"checkpoint sidecar: {e}") from e


def unwrap_routed_(model: nn.Module) -> list[list[int]] | None:
    """Put the routed head's Linear back as the classifier; returns its tasks (None if the head is not routed)."""
    head = model.get_classifier()
    if not isinstance(head, RoutedHead):
        return None
    tasks = head.tasks()
    head.detach_(model)
    set_classifier_(model, head.linear)
    return tasks


def set_classifier_(model: nn.Module, module: nn.Module) -> None:
    """Replace the module ``get_classifier`` returns (found by identity among the model's children)."""
    current = model.get_classifier()
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if child is current:
                setattr(parent, child_name, module)
                return
    raise IndexFileError("the classifier is not a sub-module of the model")
