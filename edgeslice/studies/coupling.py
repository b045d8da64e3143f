"""Coupled channels: what a slice keeps once torch-pruning's dependency groups are respected.

A channel can only be removed if it is non-critical in every sliced layer of its group (depthwise convs share
channels with the conv before them, squeeze-excite gates with their block, residual projections with their whole
stage). The groups and the effective keep masks come from :func:`edgeslice.restructure.plan_restructure`; this
module only summarises them, per layer and per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..slicing.observe import Layer


@dataclass
class CouplingReport:
    """Critical vs kept channels, per sliced layer and per torch-pruning group.

    Attributes:
        layers: per layer ``{layer, channels, critical, kept, coupled}``; ``coupled`` = channels kept only because
            a coupled layer needs them (kept − critical).
        groups: per group ``{root, members, channels, removed, kept, coupled}``; ``coupled`` sums the members'.
        effective_keep: layer → (N,) bool, the channels that survive a restructure.
    """

    layers: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    effective_keep: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def coupled_channels(self) -> int:
        """Channels kept only through coupling, over all layers."""
        return int(sum(r["coupled"] for r in self.layers))

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "groups": self.groups, "coupled_channels": self.coupled_channels}


def coupling_report(
    model: nn.Module,
    layers: list[Layer],
    keep: dict[str, torch.Tensor],
    example: torch.Tensor,
    *,
    scores: dict[str, torch.Tensor] | None = None,
) -> CouplingReport:
    """Summarise how coupling changes a slice, without changing the model.

    Args:
        model: the model (unchanged).
        layers: its sliceable layers.
        keep: layer → (N,) bool critical channels (e.g. a :class:`~edgeslice.slicing.SliceResult`'s ``critical``).
        example: an input batch for tracing.
        scores: optional per-layer scores, used as in :func:`~edgeslice.restructure.plan_restructure` to pick the
            survivor of a group with no critical channel.

    Example:
        >>> report = coupling_report(model, slicer.layers, result.critical, x[:2])
        >>> report.coupled_channels
    """
    from ..restructure import plan_restructure

    _, plans, effective = plan_restructure(model, layers, keep, example, scores=scores)
    report = CouplingReport(effective_keep=effective)
    coupled: dict[str, int] = {}
    for la in layers:
        if la.name not in keep:
            continue
        crit = keep[la.name].to(torch.bool)
        kept = effective.get(la.name, torch.ones_like(crit))
        coupled[la.name] = int((kept & ~crit).sum())
        report.layers.append(
            {
                "layer": la.name,
                "channels": la.channels,
                "critical": int(crit.sum()),
                "kept": int(kept.sum()),
                "coupled": coupled[la.name],
            }
        )
    for p in plans:
        report.groups.append(
            {
                "root": p.root,
                "members": list(p.members),
                "channels": p.channels,
                "removed": len(p.remove),
                "kept": p.channels - len(p.remove),
                "coupled": int(sum(coupled.get(m, 0) for m in p.members)),
            }
        )
    return report
