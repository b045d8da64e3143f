"""edgeslice-device: the torch-free runtime of edgeslice bundles (verify, predict, add a class on the device).

Needs only onnxruntime, numpy, Pillow and onnx; imports nothing of the host package ``edgeslice`` nor torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .bundle import Bundle as Bundle
from .bundle import open_bundle as open_bundle
from .bundle import write_bundle_meta as write_bundle_meta
from .errors import BundleError as BundleError
from .grow import add_class as add_class
from .predict import predict as predict
from .preprocess import Preprocess as Preprocess
from .stats import ClassStatistics as ClassStatistics

__all__ = [
    "Bundle",
    "BundleError",
    "ClassStatistics",
    "Preprocess",
    "__version__",
    "add_class",
    "open_bundle",
    "predict",
    "write_bundle_meta",
]
