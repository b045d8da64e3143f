"""The pipelines behind the commands: configurations, the cached baseline, calibrate + slice, and ``compress``.

``compress`` (:mod:`.compress`) runs as stages: load → calibrate + slice → (device search) → restructure → fine-tune →
(iterative prune) → export → measure → report; see ``docs/architecture.md``.
"""

from ..data import make_prepare as make_prepare  # where it lived before; the normalisation is the data's
from .baseline import BaselineRecipe as BaselineRecipe
from .baseline import cached_baseline as cached_baseline
from .baseline import check_against_data as check_against_data
from .baseline import check_data as check_data
from .baseline import edgeslice_home as edgeslice_home
from .baseline import load_checkpoint_data as load_checkpoint_data
from .baseline import load_compress_data as load_compress_data
from .baseline import meta_for as meta_for
from .baseline import near_chance_warning as near_chance_warning
from .baseline import train_baseline as train_baseline
from .baseline import weights_source as weights_source
from .calibrate import calibration_set as calibration_set
from .calibrate import describe_slice as describe_slice
from .calibrate import layer_table as layer_table
from .calibrate import plot_layer_ratios as plot_layer_ratios
from .calibrate import slice_model as slice_model
from .compress import compress as compress
from .compress import finetune_options as finetune_options
from .config import AUGMENT_MODES as AUGMENT_MODES
from .config import CONFIG_VERSION as CONFIG_VERSION
from .config import QUANTIZE_MODES as QUANTIZE_MODES
from .config import CompressConfig as CompressConfig
from .config import SliceConfig as SliceConfig
