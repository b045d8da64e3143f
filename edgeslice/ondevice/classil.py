"""Class-incremental heads without stored images, under their old import path.

The code lives in three modules: the class statistics and their file form (:mod:`edgeslice.classstats`), the routed
head (:mod:`edgeslice.routed`) and the host-side calibration that computes the statistics at slicing time
(:mod:`edgeslice.ondevice.host_stats`). This module only re-exports their public names.
"""

from __future__ import annotations

from ..classstats import DEFAULT_BUDGET as DEFAULT_BUDGET
from ..classstats import DEFAULT_SHRINKAGE as DEFAULT_SHRINKAGE
from ..classstats import MIN_TAP_RANK as MIN_TAP_RANK
from ..classstats import READ_VERSIONS as READ_VERSIONS
from ..classstats import STATS_FORMAT as STATS_FORMAT
from ..classstats import STATS_VERSION as STATS_VERSION
from ..classstats import ClassStats as ClassStats
from ..classstats import Tap as Tap
from ..classstats import choose_taps as choose_taps
from ..classstats import class_stats as class_stats
from ..classstats import feature_moments as feature_moments
from ..classstats import router_features as router_features
from ..classstats import stats_from_moments as stats_from_moments
from ..routed import ROUTED as ROUTED
from ..routed import RoutedHead as RoutedHead
from ..routed import install_head_ as install_head_
from ..routed import install_routed_ as install_routed_
from ..routed import routed_head as routed_head
from ..routed import routed_spec as routed_spec
from ..routed import set_classifier_ as set_classifier_
from ..routed import unwrap_routed_ as unwrap_routed_
from .host_stats import SCORER_PER_CLASS as SCORER_PER_CLASS
from .host_stats import STATS_PER_CLASS as STATS_PER_CLASS
from .host_stats import attach_class_stats as attach_class_stats
from .host_stats import isolated_features as isolated_features
from .host_stats import stats_for_index as stats_for_index

__all__ = [
    "DEFAULT_BUDGET",
    "ClassStats",
    "RoutedHead",
    "attach_class_stats",
    "class_stats",
    "Tap",
    "choose_taps",
    "feature_moments",
    "install_head_",
    "install_routed_",
    "isolated_features",
    "routed_head",
    "router_features",
    "routed_spec",
    "set_classifier_",
    "stats_for_index",
    "stats_from_moments",
    "unwrap_routed_",
]
