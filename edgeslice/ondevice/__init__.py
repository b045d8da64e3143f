"""The device-side learner: exact channel freezing, partial training and on-device incremental development.

Needs only torch, timm, safetensors and numpy at run time (no torch-pruning, captum, onnx or onnxruntime), so it runs
on a Linux-class edge device as well as on the host. See :mod:`.freeze` for what "a channel's parameters" are.
"""

from ..data import relabel as relabel  # it lived in learner.py; a data operation
from .accuracy import task_accuracy as task_accuracy
from .freeze import ChannelGroup as ChannelGroup
from .freeze import ExactFreezer as ExactFreezer
from .freeze import TrainPlan as TrainPlan
from .freeze import channel_groups as channel_groups
from .freeze import classifier_modules as classifier_modules
from .freeze import make_plan as make_plan
from .grow import extend_index as extend_index
from .grow import grow_classifier_ as grow_classifier_
from .grow import increment_plan as increment_plan
from .grow import model_layers as model_layers
from .grow import sample_fraction as sample_fraction
from .grow import stored_bytes as stored_bytes
from .guarantees import logit_rounding_bound as logit_rounding_bound
from .guarantees import old_logit_check as old_logit_check
from .guarantees import pre_logits as pre_logits
from .learner import HEADS as HEADS
from .learner import IncrementConfig as IncrementConfig
from .learner import IncrementResult as IncrementResult
from .learner import learn_increment as learn_increment
from .loop import LoopConfig as LoopConfig
from .loop import peak_rss_bytes as peak_rss_bytes
from .loop import train_partial as train_partial
from .new_slices import slice_new_classes as slice_new_classes
