"""torch-pruning's dependency graph, read for restructuring: the groups of coupled channels (:func:`sliced_groups`,
:class:`GroupChannels`: which of a group's channels may go given the sliced layers), and two guards over the
library's traversal (:func:`bounded_traversal`, :func:`index_maps_fixed`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..slicing.observe import Layer
from ..torchutil import classifier_names, eval_mode

__all__ = [
    "MAX_GROUP_ITEMS",
    "GroupChannels",
    "bounded_traversal",
    "dependency_groups",
    "group_channels",
    "index_maps_fixed",
    "is_channel_norm",
    "sliced_groups",
]

#: Items one torch-pruning group traversal may collect before the model is refused. Real groups hold at most a few
#: thousand (densenet121: 2,739 over all its 120 groups); RexNet's partial-channel shortcuts make torch-pruning 1.6
#: revisit the same layers with ever new index lists (over 200,000 items for one group within seconds, unbounded).
MAX_GROUP_ITEMS = 50_000


_traversal_depth = 0


@contextlib.contextmanager
def bounded_traversal(limit: int = MAX_GROUP_ITEMS) -> Iterator[None]:
    """While open, torch-pruning's group traversal finds already-collected (layer, handler, indices) items through a
    hash table instead of a scan of the group (the same answers: tested), and a traversal that collects more than
    ``limit`` items stops with a one-line :class:`~edgeslice.errors.ModelError` instead of running for hours.

    Re-entrant; the library's methods are restored when the outermost context closes.
    """
    global _traversal_depth
    from torch_pruning import _helpers
    from torch_pruning.dependency.group import Group

    from ..errors import ModelError

    if _traversal_depth:
        _traversal_depth += 1
        try:
            yield
        finally:
            _traversal_depth -= 1
        return

    def table(group) -> list:
        index = group.__dict__.get("_edgeslice_index")
        if index is None or index[0] != len(group._group):  # built lazily, rebuilt if the list changed elsewhere
            seen: dict = {}
            for item in group._group:
                seen.setdefault((item.dep.target, item.dep.handler), set()).add(tuple(item.idxs))
            index = group._edgeslice_index = [len(group._group), seen]
        return index

    def has_pruning_op(self, dep, idxs) -> bool:
        return tuple(idxs) in table(self)[1].get((dep.target, dep.handler), ())

    def add_dep(self, dep, idxs) -> None:
        if len(self._group) >= limit:
            raise ModelError(
                f"cannot restructure: torch-pruning's dependency traversal collects over {limit:,} items for one "
                "group (channels tied through sliced residual additions, as in RexNet's partial shortcuts)"
            )
        self._group.append(_helpers.GroupItem(dep=dep, idxs=idxs))
        index = self.__dict__.get("_edgeslice_index")
        if index is not None and index[0] == len(self._group) - 1:
            index[1].setdefault((dep.target, dep.handler), set()).add(tuple(idxs))
            index[0] += 1

    saved = Group.has_pruning_op, Group.add_dep
    Group.has_pruning_op, Group.add_dep = has_pruning_op, add_dep
    _traversal_depth = 1
    try:
        yield
    finally:
        _traversal_depth = 0
        Group.has_pruning_op, Group.add_dep = saved


@contextlib.contextmanager
def index_maps_fixed(dg) -> Iterator[None]:
    """While open, ``dg``'s index maps are computed once instead of at every group query.

    torch-pruning 1.6 recomputes every reshape/concat/split index map of the graph in each ``get_pruning_group``
    (40 ms on EfficientViT-B0, hundreds of queries per plan: most of a plan's time). While the model is not
    pruned the maps do not change, so queries inside this context see the same maps (tested: the same plans).
    Do not prune inside it.
    """
    from torch_pruning.dependency import index_mapping

    update = index_mapping.update_index_mapping
    update(dg)
    index_mapping.update_index_mapping = lambda graph: None if graph is dg else update(graph)
    try:
        yield
    finally:
        index_mapping.update_index_mapping = update


#: Normalisations that mix channels: removing a channel changes every other channel's output, so no masked model
#: equals the pruned one; groups that pass through them keep all their channels.
_CROSS_CHANNEL_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@dataclass
class GroupChannels:
    """Which channels of one torch-pruning group may go: the one answer :func:`plan_restructure` and every width
    rule of :mod:`edgeslice.allocation` share, so a width is never asked of a group the restructure keeps whole.

    Channels go by *position*: ``size`` root channels, the same positions in each of ``chunks`` chunks (grouped
    convolutions), and only through the sliced layers' items (a layer's channel indices and their root indices).
    """

    group: object  # torch-pruning's Group (its items, for position scores such as its group magnitude)
    root: str
    channels: int
    chunks: int
    items: list[tuple[str, list[int], list[int]]]  # (sliced layer, its channel indices, their root indices)
    #: why none of the group's channels may go, whatever the slice says (None: some may)
    kept_whole: str | None = None

    @property
    def module(self) -> nn.Module:
        return self.group[0].dep.target.module

    @property
    def members(self) -> list[str]:
        return sorted({name for name, _, _ in self.items})

    @property
    def size(self) -> int:
        """Positions per chunk."""
        return self.channels // self.chunks

    @property
    def removable(self) -> bool:
        """Some channels may go: a sliced layer is in the group and nothing keeps it whole."""
        return bool(self.items) and self.kept_whole is None


def group_channels(dg, group, names: dict[nn.Module, str], sliced: set[str]) -> GroupChannels:
    """What of ``group`` may go (see :class:`GroupChannels`).

    A group is kept whole when its channels pass a cross-channel normalisation (LayerNorm, GroupNorm with fewer
    groups than channels), when torch-pruning maps channels of a member out of that member's range (attention and
    reshapes: EfficientViT), or when its root's channels do not split into its convolution groups. A group without
    a sliced layer has no items: nothing observes its channels, so none go.
    """
    root_module = group[0].dep.target.module
    channels = int(dg.get_out_channels(root_module))
    chunks = _chunks(group)
    items = list(_out_channel_items(dg, group, names, sliced))
    reason = _kept_whole_reason(dg, group, names) if items else None
    if reason is None and items and channels % chunks:
        reason = f"{channels} channels do not split into {chunks} convolution groups"
    return GroupChannels(group, names[root_module], channels, chunks, items, reason)


@bounded_traversal()
def sliced_groups(model: nn.Module, layers: list[Layer], example: torch.Tensor) -> tuple[object, list[GroupChannels]]:
    """torch-pruning's dependency graph of ``model`` and, for each of its out-channel groups, what may go given the
    sliced ``layers`` (:func:`group_channels`), traced once."""
    names = {m: n for n, m in model.named_modules()}
    sliced = {layer.name for layer in layers}
    dg, groups = dependency_groups(model, example)
    return dg, [group_channels(dg, group, names, sliced) for group in groups]


@bounded_traversal()
def dependency_groups(model: nn.Module, example: torch.Tensor) -> tuple[object, list]:
    """torch-pruning's dependency graph of ``model`` and its out-channel groups (rooted at convs and linears, the
    classifier left out), traced in eval mode."""
    import torch_pruning as tp

    modules = dict(model.named_modules())
    heads = [modules[n] for n in classifier_names(model)]
    with eval_mode(model):
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        with index_maps_fixed(dg):
            groups = list(dg.get_all_groups(ignored_layers=heads, root_module_types=(nn.Conv2d, nn.Linear)))
    return dg, groups


def _out_channel_items(dg, group, names: dict[nn.Module, str], sliced: set[str]):
    for item in group:
        module = item.dep.target.module
        name = names.get(module)
        if name in sliced and dg.is_out_channel_pruning_fn(item.dep.handler):
            yield name, list(item.idxs), list(item.root_idxs)


def _kept_whole_reason(dg, group, names: dict[nn.Module, str]) -> str | None:
    """Why a whole group must keep its channels (None when it may lose some)."""
    for item in group:
        module = item.dep.target.module
        if isinstance(module, _CROSS_CHANNEL_NORMS) and not is_channel_norm(module):
            return f"its channels are normalised together by {names.get(module, '?')} ({type(module).__name__})"
        if isinstance(module, nn.Module) and dg.is_out_channel_pruning_fn(item.dep.handler):
            n = dg.get_out_channels(module)
            if n is not None and item.idxs and max(item.idxs) >= n:
                return f"torch-pruning maps channels of {names.get(module, '?')} out of range (reshape/attention)"
    return None


def _chunks(group) -> int:
    """Channel grouping of a group (grouped convs): removals repeat in every chunk, as in torch-pruning's MetaPruner."""
    best = 1
    for item in group:
        module = item.dep.target.module
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups != module.out_channels:
            best = max(best, module.groups)
    return best


def is_channel_norm(module: nn.Module) -> bool:
    """A normalisation that maps each channel on its own (BatchNorm, or GroupNorm with one channel per group)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or (
        isinstance(module, nn.GroupNorm) and module.num_groups == module.num_channels
    )
