"""Classify images with a bundle's model: the class and its softmax probability, one per image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .bundle import Bundle, open_bundle
from .errors import BundleError
from .graph import session
from .images import batch_size_for, read_pixels


class Prediction(NamedTuple):
    """One image's prediction: file, class name and softmax probability of that class."""

    file: str
    class_name: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "class": self.class_name, "score": self.score}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def predict(
    bundle: Bundle | str | Path, image_paths: Sequence[str | Path], *, batch: int | None = None
) -> list[Prediction]:
    """Predict the class of every image (all images are read and checked before the model runs).

    Raises:
        BundleError: an invalid bundle or an unreadable or wrong-channel image.

    Example:
        >>> predict("bundle", ["cat.png"])[0].class_name  # doctest: +SKIP
        'cat'
    """
    b = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    x = read_pixels(list(image_paths), b.preprocess)
    batch = batch or batch_size_for(x.shape[1:])
    sess = session(b.model_bytes())
    name = sess.get_inputs()[0].name
    out = []
    for start in range(0, len(x), batch):
        probs = softmax(sess.run(None, {name: b.preprocess.normalize(x[start : start + batch])})[0])
        if probs.shape[1] != len(b.classes):
            raise BundleError(f"model.onnx gives {probs.shape[1]} logits for the bundle's {len(b.classes)} classes")
        for i, row in enumerate(probs):
            c = int(row.argmax())
            out.append(Prediction(str(image_paths[start + i]), b.classes[c], float(row[c])))
    return out
