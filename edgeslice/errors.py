"""Exceptions whose message is a one-line explanation fit for a command-line user."""

from __future__ import annotations


class EdgesliceError(Exception):
    """Base class: the CLI prints ``str(error)`` on one line and exits with code 1."""


class ModelError(EdgesliceError):
    """Unknown model, unreadable checkpoint, or a checkpoint that does not match the model."""


class IndexFileError(EdgesliceError):
    """A critical-neuron index that is malformed or belongs to another model."""


class ExportError(EdgesliceError):
    """ONNX export failed or onnxruntime disagrees with PyTorch."""


class OutputError(EdgesliceError):
    """An output folder that cannot be used: a file, not writable, held by another run, or holding a user's file."""


class MissingExtraError(EdgesliceError):
    """A feature needs an optional dependency that is not installed (the message names the extra to install)."""
