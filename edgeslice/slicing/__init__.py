"""Semantic slicing: contribution metrics, Gram/CKA similarity, and the selection strategies."""

from .metrics import list_metrics as list_metrics
from .observe import Layer as Layer
from .observe import channel_masks as channel_masks
from .observe import find_layers as find_layers
from .slicer import STRATEGIES as STRATEGIES
from .slicer import SemanticSlicer as SemanticSlicer
from .slicer import SliceResult as SliceResult
from .solver import SIMILARITIES as SIMILARITIES
from .solver import linear_scan as linear_scan
from .solver import min_k as min_k
from .solver import prefix_similarity as prefix_similarity
from .stats import CalibrationStats as CalibrationStats
