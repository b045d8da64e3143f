"""The paper's research studies, beside the product path: what ``edgeslice evaluate-slices`` and the benchmarks run.

- :mod:`.rq1`: the whole RQ1 evaluation as one call (:func:`run_evaluation` with an :class:`EvaluateConfig`).
- :mod:`.sweep`: the masked-accuracy sweep over metrics × strategies and its AUC (:class:`MaskedEvaluator`).
- :mod:`.masking`: the pilot masking study (Tables 1–2).
- :mod:`.coupling`: what a slice keeps once torch-pruning's dependency groups are respected.
- :mod:`.deeparc`: the DeepArc baseline (layer-level redundancy by linear CKA).
- :mod:`.figures`: the RQ1 figure (paper Fig. 5).

The product's own per-layer chart is :func:`edgeslice.pipeline.calibrate.plot_layer_ratios`.
"""

from .coupling import CouplingReport as CouplingReport
from .coupling import coupling_report as coupling_report
from .deeparc import DeepArcReport as DeepArcReport
from .deeparc import remove_blocks_ as remove_blocks_
from .masking import masking_study as masking_study
from .rq1 import PAPER_METRICS as PAPER_METRICS
from .rq1 import EvaluateConfig as EvaluateConfig
from .rq1 import run_evaluation as run_evaluation
from .sweep import MaskedEvaluator as MaskedEvaluator
from .sweep import accuracy as accuracy
from .sweep import auc_table as auc_table
from .sweep import rq1_sweep as rq1_sweep
