"""Semantic slicing: contribution metrics, Gram/CKA similarity, and the selection strategies."""

from .deeplift import channel_attributions as channel_attributions
from .heuristics import magnitude_scores as magnitude_scores
from .heuristics import random_scores as random_scores
from .metrics import list_metrics as list_metrics
from .observe import Layer as Layer
from .observe import channel_masks as channel_masks
from .observe import find_layers as find_layers
from .slicer import SOLVERS as SOLVERS
from .slicer import STRATEGIES as STRATEGIES
from .slicer import SemanticSlicer as SemanticSlicer
from .slicer import SliceResult as SliceResult
from .solver import SIMILARITIES as SIMILARITIES
from .solver import linear_scan as linear_scan
from .solver import min_k as min_k
from .solver import prefix_similarity as prefix_similarity
from .stats import CalibrationStats as CalibrationStats
from .stats import collect_stats as collect_stats
