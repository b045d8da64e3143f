"""Physically remove non-critical channels (paper §4.1, Eq. 5). The only module that talks to torch-pruning.

Channels are coupled: a depthwise conv shares its channels with the pointwise conv before it, a squeeze-excite
gate with the block it scales, and every projection of a residual stage with the whole stage. torch-pruning's
dependency graph groups such channels; a channel is removed only if it is non-critical in every sliced layer of its
group. The classifier's outputs are never removed.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .models import count_parameters
from .slicing.observe import Layer
from .torchutil import classifier_names, eval_mode


@dataclass
class GroupPlan:
    """One torch-pruning group: its root layer, the sliced layers in it, and the root channels to remove."""

    root: str
    members: list[str]
    channels: int
    remove: list[int]
    #: why the group keeps all its channels whatever the slice says (None: it may lose some)
    kept_whole: str | None = None
    #: per-channel norm → its channels this plan removes (torch-pruning's indices in that norm)
    norms: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class RestructureReport:
    params_before: int
    params_after: int
    groups: list[GroupPlan] = field(default_factory=list)
    #: layer → (N,) bool: channels that survive, after coupling (what a masked model must zero to match).
    effective_keep: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per-channel norm → (C,) bool: its channels that survive. A removed channel is gone from every norm that
    #: reads it, including norms after a concatenation (DenseNet's pre-activation layers), where zeroing the
    #: producer is not enough: the norm would map that zero to its shift. The masked model zeros these too.
    norm_keep: dict[str, torch.Tensor] = field(default_factory=dict)

    def masked(self, model: nn.Module, layers: list[Layer]):
        """The masked form of ``model`` that the restructured one equals: a context manager (see
        :func:`~edgeslice.slicing.observe.channel_masks`)."""
        from .slicing.observe import channel_masks

        return channel_masks(model, layers, self.effective_keep, extra=self.norm_keep)

    @property
    def removed_share(self) -> float:
        return 1.0 - self.params_after / self.params_before

    def to_dict(self) -> dict:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "removed_share": self.removed_share,
            "groups": [
                {"root": g.root, "members": g.members, "channels": g.channels, "removed": len(g.remove)}
                | ({"kept_whole": g.kept_whole} if g.kept_whole else {})
                for g in self.groups
            ],
        }


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

    from .errors import ModelError

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
        if isinstance(module, _CROSS_CHANNEL_NORMS) and not _is_channel_norm(module):
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


def _round(remove_pos: torch.Tensor, best: torch.Tensor, step: int) -> None:
    """Give back the best-scored removed positions until the kept count is a multiple of ``step`` (in place)."""
    kept = len(remove_pos) - int(remove_pos.sum())
    extra = min(-kept % step, int(remove_pos.sum()))
    if extra:
        candidates = torch.nonzero(remove_pos).flatten()
        rank = torch.sort(-best[candidates], stable=True).indices[:extra]
        remove_pos[candidates[rank]] = False


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


def plan_restructure(
    model: nn.Module,
    layers: list[Layer],
    keep: dict[str, torch.Tensor],
    example: torch.Tensor,
    *,
    scores: dict[str, torch.Tensor] | None = None,
    round_to: int = 1,
    traced: tuple[object, list[GroupChannels]] | None = None,
) -> tuple[object, list[GroupPlan], dict[str, torch.Tensor]]:
    """Decide which channels go, group by group, without changing the model.

    A group's channels are decided per *position*: with grouped convolutions (``G`` groups) torch-pruning removes
    the same positions from every chunk of ``N / G`` channels, as its MetaPruner does. The removal is then checked
    against what torch-pruning's own traversal removes for it (concatenation, splitting and depthwise convs can tie
    several root channels together, e.g. a GhostNet module's primary and cheap halves): a root channel whose removal
    would take a critical channel, or a channel of a prunable layer that is not sliced, is kept, until the planned
    removal is closed under the traversal. Groups whose channels pass a cross-channel normalisation are kept whole.

    Args:
        model: the model (unchanged).
        layers: its sliceable layers.
        keep: layer → (N,) bool critical channels.
        example: an input batch for tracing.
        scores: layer → (N,) scores; when a whole group is non-critical its best-scored channel is kept (else 0).
        round_to: keep a multiple of this many channels per group (adding back the best-scored removed ones), so
            runtimes whose fast convolution kernels work on channel blocks (onnxruntime's NCHWc: 8 or 16) use them;
            with grouped convolutions the kept count is a multiple of both ``round_to`` and the group count.
        traced: ``sliced_groups(model, layers, example)`` when already computed, to plan many ``keep`` masks of
            one unchanged model without tracing again (every layer of ``layers`` in ``keep``).

    Returns:
        (dependency graph, group plans, effective keep masks per sliced layer).
    """
    names = {m: n for n, m in model.named_modules()}
    sliced = {layer.name for layer in layers if layer.name in keep}
    dg, groups = traced or sliced_groups(model, [layer for layer in layers if layer.name in sliced], example)
    plans: list[GroupPlan] = []
    effective = {name: torch.ones_like(keep[name], dtype=torch.bool) for name in sliced}
    keep = {name: keep[name].to(torch.bool) for name in sliced}
    with index_maps_fixed(dg):  # planning queries many groups and prunes none
        for gc in groups:
            if not gc.items:
                continue
            if gc.kept_whole is not None:
                plans.append(GroupPlan(gc.root, gc.members, gc.channels, remove=[], kept_whole=gc.kept_whole))
                continue
            plan, removed = _plan_group(dg, gc, keep, scores, round_to, names, sliced)
            plans.append(plan)
            for name, idxs in removed.items():
                effective[name][torch.as_tensor(idxs, dtype=torch.long)] = False
    return dg, plans, effective


@dataclass(frozen=True)
class _Removal:
    """What torch-pruning's traversal takes when some root positions of a group go (one ``get_pruning_group``)."""

    #: root positions the traversal removes (the asked ones and those tied to them)
    closure: frozenset[int]
    #: sliced layer → [(its channel indices, the root position each came from)]
    layers: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]
    #: root positions whose removal reaches a prunable layer that is not sliced (nothing would mask it)
    unobserved: frozenset[int]
    #: per-channel norm → its channels removed
    norms: dict[str, list[int]]

    def bad(self, keep: dict[str, torch.Tensor], size: int) -> torch.Tensor:
        """(size,) bool: root positions whose removal takes a critical channel or an unobserved layer's."""
        bad = torch.zeros(size, dtype=torch.bool)
        for name, parts in self.layers.items():
            for ci, ri in parts:
                bad[ri[keep[name][ci]]] = True
        if self.unobserved:
            bad[sorted(self.unobserved)] = True
        return bad

    def removed(self) -> dict[str, list[int]]:
        return {name: sorted({int(i) for ci, _ in parts for i in ci}) for name, parts in self.layers.items()}


def _removal(dg, gc: GroupChannels, positions: list[int], names: dict, sliced: set[str]) -> _Removal:
    size = gc.size
    remove = sorted(p + c * size for c in range(gc.chunks) for p in positions)
    handler = dg.get_pruner_of_module(gc.module).prune_out_channels
    actual = dg.get_pruning_group(gc.module, handler, idxs=remove)
    layers: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    unobserved: set[int] = set()
    norms: dict[str, list[int]] = {}
    for item in actual:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or not dg.is_out_channel_pruning_fn(item.dep.handler):
            continue
        name = names.get(module)
        if _is_channel_norm(module) and name is not None:
            norms[name] = sorted(set(norms.get(name, [])) | set(item.idxs))
        ri = torch.as_tensor(list(item.root_idxs), dtype=torch.long) % size
        if name in sliced:
            layers.setdefault(name, []).append((torch.as_tensor(list(item.idxs), dtype=torch.long), ri))
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            unobserved.update(ri.tolist())
    closure = frozenset(int(i) % size for i in actual[0].idxs)
    return _Removal(closure, layers, frozenset(unobserved), norms)


#: Rounds of the whole-set closure before a group is solved position by position (most groups close in one or two).
_SET_ROUNDS = 8
#: dependency graph → {(root, position): its single-position removal}; a graph's traversals do not change while
#: it is not pruned, and allocation plans the same graph many times (one per bisected width cap).
_POSITION_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan_group(
    dg, gc: GroupChannels, keep: dict, scores: dict | None, round_to: int, names: dict, sliced: set[str]
) -> tuple[GroupPlan, dict[str, list[int]]]:
    """One group's removal, closed under torch-pruning's traversal (see :func:`plan_restructure`).

    First the set is closed as a whole: remove, add what the traversal ties to it, ban positions whose removal
    takes a critical channel; a few rounds settle most groups. Where they do not (ties that pull banned or
    rounded-back positions in again, as GhostNet's primary and cheap halves do), the group is solved position by
    position: each candidate's own traversal once (cached per graph), a position goes only with everything its
    traversal takes, and rounding gives positions back together with everything that would take them.

    Returns:
        (the group's plan, sliced layer → its removed channel indices).
    """
    import math

    size, chunks = gc.size, gc.chunks
    needed = torch.zeros(size, dtype=torch.bool)
    covered = torch.zeros(gc.channels, dtype=torch.bool)
    best = torch.full((size,), float("-inf"), dtype=torch.float64)
    for name, idxs, root_idxs in gc.items:
        ri = torch.as_tensor(root_idxs, dtype=torch.long)
        ci = torch.as_tensor(idxs, dtype=torch.long)
        needed.index_put_((ri % size,), keep[name][ci], accumulate=True)
        covered[ri] = True
        if scores is not None and name in scores:
            best.scatter_reduce_(0, ri % size, scores[name].to(torch.float64)[ci], "amax")
    candidates = covered.view(chunks, size).all(0) & ~needed
    remove_pos = candidates.clone()
    banned = ~remove_pos
    step = round_to // math.gcd(round_to, chunks) if round_to > 1 else 1
    keep_first = int(torch.argmax(best)) if scores is not None else 0
    done: _Removal | None = None
    for _ in range(_SET_ROUNDS):
        if bool(remove_pos.all()):  # a group may not vanish: keep its best position
            remove_pos[keep_first] = False
        if step > 1:
            _round(remove_pos, best, step)
        positions = torch.nonzero(remove_pos).flatten().tolist()
        if not positions:
            break
        removal = _removal(dg, gc, positions, names, sliced)
        bad = removal.bad(keep, size)
        closure = torch.zeros(size, dtype=torch.bool)
        closure[sorted(removal.closure)] = True
        if not bool(bad.any()) and bool((closure == remove_pos).all()):
            done = removal
            break
        banned |= bad
        remove_pos = (remove_pos | closure) & ~banned
    else:
        positions = _solve_by_position(dg, gc, candidates, keep, best, keep_first, step, names, sliced)
        if positions:
            removal = _removal(dg, gc, positions, names, sliced)
            # Kept whole unless the solved set is closed and takes nothing critical (a traversal that is not the
            # union of its positions' traversals would show here).
            if not bool(removal.bad(keep, size).any()) and removal.closure == set(positions):
                done = removal
                remove_pos = torch.zeros(size, dtype=torch.bool)
                remove_pos[positions] = True
    remove_mask = torch.zeros(gc.channels, dtype=torch.bool)
    if done is not None:
        remove_mask.view(chunks, size)[:, remove_pos] = True
    plan = GroupPlan(
        root=gc.root,
        members=gc.members,
        channels=gc.channels,
        remove=torch.nonzero(remove_mask).flatten().tolist(),
        norms=dict(done.norms) if done is not None else {},
    )
    return plan, done.removed() if done is not None else {}


def _solve_by_position(
    dg,
    gc: GroupChannels,
    candidates: torch.Tensor,
    keep: dict,
    best: torch.Tensor,
    keep_first: int,
    step: int,
    names: dict,
    sliced: set[str],
) -> list[int]:
    """The largest set of ``candidates`` positions closed under the traversal and taking nothing critical, then
    kept from vanishing and rounded to ``step`` kept positions (best-scored given back first)."""
    size = gc.size
    cache = _POSITION_CACHE.setdefault(dg, {}).setdefault(frozenset(sliced), {})
    table = {}
    for p in torch.nonzero(candidates).flatten().tolist():
        if (gc.root, p) not in cache:
            cache[gc.root, p] = _removal(dg, gc, [p], names, sliced)
        table[p] = cache[gc.root, p]
    allowed = {p for p, r in table.items() if not bool(r.bad(keep, size).any())}

    def close() -> None:  # a position goes only with everything its removal takes
        while drop := {p for p in allowed if not table[p].closure <= allowed}:
            allowed.difference_update(drop)

    def give_back(q: int) -> None:  # q stays, and so does every position whose removal would take it
        allowed.difference_update({p for p in allowed if q in table[p].closure})
        close()

    close()
    if len(allowed) == size:
        give_back(keep_first)
    while step > 1 and allowed and (size - len(allowed)) % step:
        give_back(max(allowed, key=lambda p: (float(best[p]), -p)))
    return sorted(allowed)


def _is_channel_norm(module: nn.Module) -> bool:
    """A normalisation that maps each channel on its own (BatchNorm, or GroupNorm with one channel per group)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or (
        isinstance(module, nn.GroupNorm) and module.num_groups == module.num_channels
    )


def norm_keep_masks(model: nn.Module, plans: list[GroupPlan]) -> dict[str, torch.Tensor]:
    """Per-channel norm → (C,) bool, the channels that survive the plans (norms that lose none are left out)."""
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for plan in plans:
        for name, idxs in plan.norms.items():
            if name not in out:
                norm = modules[name]
                out[name] = torch.ones(getattr(norm, "num_features", None) or norm.num_channels, dtype=torch.bool)
            out[name][torch.as_tensor(idxs, dtype=torch.long)] = False
    return out


@bounded_traversal()
def restructure_(
    model: nn.Module,
    layers: list[Layer],
    keep: dict[str, torch.Tensor],
    example: torch.Tensor,
    *,
    scores: dict[str, torch.Tensor] | None = None,
    round_to: int = 1,
) -> RestructureReport:
    """Remove every non-critical channel from ``model`` in place.

    Args:
        model: the model to shrink (any device; ``example`` must be on the same device).
        layers: its sliceable layers.
        keep: layer → (N,) bool critical channels (a slice result's ``critical``).
        example: an input batch for tracing.
        scores: optional per-layer scores to choose a survivor when a whole group is non-critical.

    Returns:
        Parameter counts, the per-group plan, and the effective (coupled) keep masks.
    """

    before = count_parameters(model)
    dg, plans, effective = plan_restructure(model, layers, keep, example, scores=scores, round_to=round_to)
    norm_keep = norm_keep_masks(model, plans)
    _prune(model, dg, plans)
    return RestructureReport(
        params_before=before,
        params_after=count_parameters(model),
        groups=plans,
        effective_keep=effective,
        norm_keep=norm_keep,
    )


def _prune(model: nn.Module, dg, plans: list[GroupPlan]) -> None:
    """Carry out ``plans`` on ``model`` in place (``dg``: its dependency graph)."""
    modules = dict(model.named_modules())
    for plan in plans:
        if not plan.remove:
            continue
        root = modules[plan.root]
        group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs=plan.remove)
        if not dg.check_pruning_group(group):
            raise RuntimeError(f"torch-pruning refused to prune group rooted at {plan.root}")
        group.prune()


@bounded_traversal()
def restructured_params(model: nn.Module, plans: list[GroupPlan], example: torch.Tensor) -> int:
    """Parameters of ``model`` restructured by ``plans`` (from :func:`plan_restructure`), counted on a copy.

    Cheaper than :func:`restructure_` (which prunes group after group, and torch-pruning recomputes every index map
    of the graph before each: 0.05 s a group on DenseNet's concatenations): every planned group is traversed on the
    unpruned copy, in its original channel indices, and each layer then loses the union of its channels at once. A
    layer loses the same channels either way, so the count is the same (tested against :func:`restructure_`).
    """
    import copy

    import torch_pruning as tp
    from torch_pruning.dependency.group import Group

    probe = copy.deepcopy(model)
    with eval_mode(probe):
        dg = tp.DependencyGraph().build_dependency(probe, example_inputs=example, verbose=False)
    modules = dict(probe.named_modules())
    union: dict[tuple, tuple[object, set[int]]] = {}  # (layer node, pruning function) → (its dependency, channels)
    with index_maps_fixed(dg):
        for plan in plans:
            if not plan.remove:
                continue
            root = modules[plan.root]
            for item in dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, plan.remove):
                union.setdefault((item.dep.target, item.dep.handler), (item.dep, set()))[1].update(item.idxs)
    merged = Group()
    merged._DG = dg
    for dep, idxs in union.values():
        merged.add_dep(dep, sorted(idxs))
    merged.prune(record_history=False)
    return count_parameters(probe)


def perturbed_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy whose BatchNorm statistics, biases and scalar/per-channel parameters are random.

    Untrained defaults (zero biases, unit variances, identity affines) map zero to zero almost everywhere, which
    would hide an observation point placed before a norm or an affine; trained models do not.
    """
    import copy

    twin = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in twin.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        for p in twin.parameters():
            if p.dim() <= 1:
                p.add_(torch.rand(p.shape, generator=g).to(p) * 0.2 - 0.1)
    return twin


def check_restructurable(model: nn.Module, example_inputs: torch.Tensor, *, seed: int = 0) -> None:
    """Refuse, in one line, a model whose restructured form would not equal its masked form.

    Slices a perturbed copy at random (half the channels critical), restructures it and compares it with the
    masked copy, as the pipeline's guard does after slicing; on a mismatch the groups are tried one at a time to
    name the first that breaks. Cheap (one trace and one prune of the untrained model), so run it before training.

    Raises:
        ModelError: naming the layer (root of the failing torch-pruning group) and the reason.
    """
    import copy

    from .errors import ModelError
    from .slicing.observe import channel_masks, find_layers

    x = example_inputs[:2]
    try:
        twin = perturbed_copy(model, seed)
        layers = find_layers(twin, x[:1])
        if not layers:
            raise ModelError(f"{type(model).__name__}: no Conv2d/Linear layer whose output channels can be observed")
        g = torch.Generator().manual_seed(seed)
        keep = {la.name: torch.rand(la.channels, generator=g) < 0.5 for la in layers}
        _, plans, effective = plan_restructure(twin, layers, keep, x)
    except ModelError:
        raise
    except Exception as e:  # torch-pruning's tracer on an unsupported operator
        raise ModelError(f"cannot trace {type(model).__name__} for restructuring: {type(e).__name__}: {e}") from None

    @bounded_traversal()
    def attempt(selected: list[GroupPlan]) -> float:
        pruned = copy.deepcopy(twin)
        members = {m for p in selected for m in p.members}
        masks = {k: (v if k in members else torch.ones_like(v)) for k, v in effective.items()}
        norms = norm_keep_masks(twin, selected)
        import torch_pruning as tp

        with eval_mode(pruned):
            dg = tp.DependencyGraph().build_dependency(pruned, example_inputs=x, verbose=False)
        mods = dict(pruned.named_modules())
        for p in selected:
            root = mods[p.root]
            dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs=p.remove).prune()
        with torch.no_grad(), channel_masks(twin, layers, masks, extra=norms):
            a = twin(x)
        with torch.no_grad():
            b = pruned.eval()(x)
        return float((a - b).abs().max()) / max(1.0, float(a.abs().max()))

    todo = [p for p in plans if p.remove]
    try:
        if attempt(todo) <= 1e-4:
            return
    except Exception:
        pass
    for p in todo:
        try:
            d = attempt([p])
        except Exception as e:
            raise ModelError(f"cannot restructure {p.root}: torch-pruning fails ({type(e).__name__}: {e})") from None
        if d > 1e-4:
            raise ModelError(
                f"cannot restructure {p.root}: removing its channels differs from zeroing them (relative {d:.2g})"
            )
    raise ModelError(f"cannot restructure {type(model).__name__}: its groups are fine alone but not together")
