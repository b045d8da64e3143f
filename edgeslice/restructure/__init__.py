"""Physically remove non-critical channels (paper §4.1, Eq. 5). The only package that talks to torch-pruning.

Channels are coupled: a depthwise conv shares its channels with the pointwise conv before it, a squeeze-excite
gate with the block it scales, and every projection of a residual stage with the whole stage. torch-pruning's
dependency graph groups such channels (:mod:`.graph`); a channel is removed only if it is non-critical in every
sliced layer of its group (:mod:`.plan`). The classifier's outputs are never removed. :mod:`.apply` prunes,
:mod:`.check` refuses a model whose restructured form would not equal its masked form.
"""

from __future__ import annotations

from .apply import RestructureReport, restructure_, restructured_params
from .check import check_restructurable, perturbed_copy
from .graph import (
    MAX_GROUP_ITEMS,
    GroupChannels,
    bounded_traversal,
    dependency_groups,
    group_channels,
    index_maps_fixed,
    sliced_groups,
)
from .plan import GroupPlan, norm_keep_masks, plan_restructure

__all__ = [
    "MAX_GROUP_ITEMS",
    "GroupChannels",
    "GroupPlan",
    "RestructureReport",
    "bounded_traversal",
    "check_restructurable",
    "dependency_groups",
    "group_channels",
    "index_maps_fixed",
    "norm_keep_masks",
    "perturbed_copy",
    "plan_restructure",
    "restructure_",
    "restructured_params",
    "sliced_groups",
]
