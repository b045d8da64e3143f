"""Model maintenance with the critical-neuron index: re-adaptation (repair) and the baselines' channel sets.

Exact freezing and the partial-training loop live in :mod:`edgeslice.ondevice` (they run on the device too);
incremental development is :func:`edgeslice.ondevice.learn_increment`.
"""

from .attacks import ATTACKS as ATTACKS
from .attacks import DEFAULT_EPS as DEFAULT_EPS
from .attacks import AttackConfig as AttackConfig
from .attacks import accuracy as accuracy
from .attacks import attack as attack
from .attacks import fgsm as fgsm
from .attacks import pgd as pgd
from .readapt import ReadaptConfig as ReadaptConfig
from .readapt import critical_plan as critical_plan
from .readapt import evaluation_sets as evaluation_sets
from .readapt import make_repair_set as make_repair_set
from .readapt import measure as measure
from .readapt import readapt_ as readapt_
from .readapt import run_readapt as run_readapt
from .readapt import stratified_sample as stratified_sample
from .selection import deeparc_blocks as deeparc_blocks
from .selection import in_blocks as in_blocks
from .selection import matched_slice as matched_slice
from .selection import share as share
