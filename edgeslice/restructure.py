"""Physically remove non-critical channels (paper §4.1, Eq. 5). The only module that talks to torch-pruning.

Channels are coupled: a depthwise conv shares its channels with the pointwise conv before it, a squeeze-excite
gate with the block it scales, and every projection of a residual stage with the whole stage. torch-pruning's
dependency graph groups such channels; a channel is removed only if it is non-critical in every sliced layer of its
group. The classifier's outputs are never removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .models import count_parameters
from .slicing.observe import Layer, classifier_names, eval_mode


@dataclass
class GroupPlan:
    """One torch-pruning group: its root layer, the sliced layers in it, and the root channels to remove."""

    root: str
    members: list[str]
    channels: int
    remove: list[int]


@dataclass
class RestructureReport:
    params_before: int
    params_after: int
    groups: list[GroupPlan] = field(default_factory=list)
    #: layer → (N,) bool: channels that survive, after coupling (what a masked model must zero to match).
    effective_keep: dict[str, torch.Tensor] = field(default_factory=dict)

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
                for g in self.groups
            ],
        }


def _out_channel_items(dg, group, names: dict[nn.Module, str], sliced: set[str]):
    for item in group:
        module = item.dep.target.module
        name = names.get(module)
        if name in sliced and dg.is_out_channel_pruning_fn(item.dep.handler):
            yield name, list(item.idxs), list(item.root_idxs)


def plan_restructure(
    model: nn.Module,
    layers: list[Layer],
    keep: dict[str, torch.Tensor],
    example: torch.Tensor,
    *,
    scores: dict[str, torch.Tensor] | None = None,
    round_to: int = 1,
) -> tuple[object, list[GroupPlan], dict[str, torch.Tensor]]:
    """Decide which channels go, group by group, without changing the model.

    Args:
        model: the model (unchanged).
        layers: its sliceable layers.
        keep: layer → (N,) bool critical channels.
        example: an input batch for tracing.
        scores: layer → (N,) scores; when a whole group is non-critical its best-scored channel is kept (else 0).
        round_to: keep a multiple of this many channels per group (adding back the best-scored removed ones), so
            runtimes whose fast convolution kernels work on channel blocks (onnxruntime's NCHWc: 8 or 16) use them.

    Returns:
        (dependency graph, group plans, effective keep masks per sliced layer).
    """
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    heads = [modules[n] for n in classifier_names(model)]
    sliced = {layer.name for layer in layers if layer.name in keep}
    with eval_mode(model):
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        groups = list(dg.get_all_groups(ignored_layers=heads, root_module_types=(nn.Conv2d, nn.Linear)))
    plans: list[GroupPlan] = []
    effective = {name: torch.ones_like(keep[name], dtype=torch.bool) for name in sliced}
    for group in groups:
        root_module = group[0].dep.target.module
        root = names[root_module]
        items = list(_out_channel_items(dg, group, names, sliced))
        if not items:
            continue
        n_root = dg.get_out_channels(root_module)
        needed = torch.zeros(n_root, dtype=torch.bool)
        covered = torch.zeros(n_root, dtype=torch.bool)
        best = torch.full((n_root,), float("-inf"), dtype=torch.float64)
        for name, idxs, root_idxs in items:
            ri = torch.as_tensor(root_idxs, dtype=torch.long)
            ci = torch.as_tensor(idxs, dtype=torch.long)
            needed[ri] |= keep[name].to(torch.bool)[ci]
            covered[ri] = True
            if scores is not None and name in scores:
                best[ri] = torch.maximum(best[ri], scores[name].to(torch.float64)[ci])
        remove_mask = covered & ~needed
        if bool(remove_mask.all()):  # a group may not vanish: keep its best channel
            remove_mask[int(torch.argmax(best)) if scores is not None else 0] = False
        if round_to > 1:  # give back the best-scored removed channels until the kept count is a multiple
            kept = n_root - int(remove_mask.sum())
            extra = min(-kept % round_to, int(remove_mask.sum()))
            if extra:
                candidates = torch.nonzero(remove_mask).flatten()
                rank = torch.sort(-best[candidates], stable=True).indices[:extra]
                remove_mask[candidates[rank]] = False
        remove = sorted(int(i) for i in torch.nonzero(remove_mask).flatten())
        members = sorted({name for name, _, _ in items})
        plans.append(GroupPlan(root=root, members=members, channels=n_root, remove=remove))
        for name, idxs, root_idxs in items:
            ri = torch.as_tensor(root_idxs, dtype=torch.long)
            effective[name][torch.as_tensor(idxs, dtype=torch.long)] = ~remove_mask[ri]
    return dg, plans, effective


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
    import torch_pruning as tp

    before = count_parameters(model)
    dg, plans, effective = plan_restructure(model, layers, keep, example, scores=scores, round_to=round_to)
    modules = dict(model.named_modules())
    for plan in plans:
        if not plan.remove:
            continue
        root = modules[plan.root]
        handler = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
        group = dg.get_pruning_group(root, handler, idxs=plan.remove)
        if not dg.check_pruning_group(group):
            raise RuntimeError(f"torch-pruning refused to prune group rooted at {plan.root}")
        group.prune()
    return RestructureReport(
        params_before=before, params_after=count_parameters(model), groups=plans, effective_keep=effective
    )
