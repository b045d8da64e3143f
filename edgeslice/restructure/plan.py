"""Deciding which channels go, group by group, without changing the model: :func:`plan_restructure` returns a
:class:`GroupPlan` per torch-pruning group, each removal closed under the library's own traversal."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from ..slicing.observe import Layer
from .graph import GroupChannels, index_maps_fixed, is_channel_norm, sliced_groups

__all__ = ["GroupPlan", "norm_keep_masks", "plan_restructure"]


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
        if is_channel_norm(module) and name is not None:
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


def _round(remove_pos: torch.Tensor, best: torch.Tensor, step: int) -> None:
    """Give back the best-scored removed positions until the kept count is a multiple of ``step`` (in place)."""
    kept = len(remove_pos) - int(remove_pos.sum())
    extra = min(-kept % step, int(remove_pos.sum()))
    if extra:
        candidates = torch.nonzero(remove_pos).flatten()
        rank = torch.sort(-best[candidates], stable=True).indices[:extra]
        remove_pos[candidates[rank]] = False


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
