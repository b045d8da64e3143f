"""Unstructured magnitude pruning with layer-wise sparsity allocations (Global, Uniform+, ERK, LAMP).

Follows Lee et al., "Layer-adaptive Sparsity for the Magnitude-based Pruning" (ICLR 2021). The allocations, masks and
the iterative loop are pure torch; :func:`prune_pipeline_` adds fine-tuning, evaluation and resumable state on top
(``edgeslice.pipeline.prune`` writes the artifacts: ONNX, checkpoint, report).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from edgeslice.pruning import apply_masks_, compute_masks, make_permanent_
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    >>> apply_masks_(model, compute_masks(model, sparsity=0.8, pruner="lamp"))
    >>> make_permanent_(model)
"""

from ._state import clear_state as clear_state
from ._state import state_dir_for as state_dir_for
from .allocators import Pruner as Pruner
from .allocators import PrunerLimitError as PrunerLimitError
from .allocators import erk_scales as erk_scales
from .allocators import get_pruner as get_pruner
from .allocators import lamp_scores as lamp_scores
from .allocators import list_pruners as list_pruners
from .allocators import register_pruner as register_pruner
from .artifacts import ARTIFACTS as ARTIFACTS
from .artifacts import curve_points as curve_points
from .artifacts import onnx_weight_stats as onnx_weight_stats
from .artifacts import plot_prune_curves as plot_prune_curves
from .iterative import NO_PRUNER as NO_PRUNER
from .iterative import IterationRecord as IterationRecord
from .iterative import IterativePruneConfig as IterativePruneConfig
from .iterative import iterative_prune_ as iterative_prune_
from .masks import apply_masks_ as apply_masks_
from .masks import compute_masks as compute_masks
from .masks import current_masks as current_masks
from .masks import make_permanent_ as make_permanent_
from .masks import prunable_weights as prunable_weights
from .masks import sparsity_report as sparsity_report
from .run import PruneReport as PruneReport
from .run import compression_rate as compression_rate
from .run import prune_pipeline_ as prune_pipeline_
from .run import resolve_dense_params as resolve_dense_params
