"""Carrying out the plans: :func:`restructure_` removes every non-critical channel from a model in place and returns
a :class:`RestructureReport`; :func:`restructured_params` counts the parameters it would leave, on a copy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..models import count_parameters
from ..slicing.observe import Layer
from ..torchutil import eval_mode
from .graph import bounded_traversal, index_maps_fixed
from .plan import GroupPlan, norm_keep_masks, plan_restructure

__all__ = ["RestructureReport", "restructure_", "restructured_params"]


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
        from ..slicing.observe import channel_masks

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
