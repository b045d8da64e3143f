"""timm model creation, checkpoints (safetensors + JSON sidecar) and model fingerprints.

A checkpoint is two files side by side: ``model.safetensors`` (weights and buffers) and ``model.json`` (what the
weights mean: timm name, classes, input format, normalisation and the shape of every layer). Channel-pruned models
load from those two files alone: the model is rebuilt with ``timm.create_model`` and each layer is resized to the
shapes recorded in the JSON, so nothing is ever unpickled (:mod:`.checkpoint`, :mod:`.meta`).

Models also come in as users have them: plain state dicts (``.safetensors``, or ``.pth/.pt/.pth.tar/.bin`` read
with ``torch.load(weights_only=True)`` only), timm ``train.py`` checkpoints (``state_dict`` / ``state_dict_ema``),
``module.`` prefixes left by DDP (:mod:`.weights`), and timm's pretrained weights (the hub, or a local file:
:mod:`.create`).
"""

from __future__ import annotations

from .checkpoint import (
    checkpoint_paths,
    has_sidecar,
    load_checkpoint,
    load_plain_checkpoint,
    read_meta,
    save_checkpoint,
)
from .create import MODEL_ALIASES, create_model, data_config, preprocess_of, resolve_device, resolve_model_name
from .meta import CHECKPOINT_VERSION, ModelMeta, count_parameters, fingerprint, module_shapes
from .weights import TORCH_SUFFIXES, read_state_dict

__all__ = [
    "CHECKPOINT_VERSION",
    "MODEL_ALIASES",
    "TORCH_SUFFIXES",
    "ModelMeta",
    "checkpoint_paths",
    "count_parameters",
    "create_model",
    "data_config",
    "fingerprint",
    "has_sidecar",
    "load_checkpoint",
    "load_plain_checkpoint",
    "module_shapes",
    "preprocess_of",
    "read_meta",
    "read_state_dict",
    "resolve_device",
    "resolve_model_name",
    "save_checkpoint",
]
