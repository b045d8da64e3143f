"""The bundle: the folder ``edgeslice compress`` writes and a device grows, and ``bundle.json``, which binds it.

``bundle.json`` (canonical JSON) names the classes, the host checkpoint's fingerprint, the classifier's tensors,
the feature width and how the bundle was made (``history``), and holds the sha256 of every file it binds
(:data:`BOUND_FILES`). :func:`open_bundle` refuses a bundle whose files were changed or whose parts describe other
classes or another model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._files import canonical_json, read_json, sha256_file, write_durable
from .errors import BundleError as BundleError
from .preprocess import Preprocess
from .stats import ClassStatistics

BUNDLE_FORMAT = "edgeslice-bundle"
BUNDLE_VERSION = 1
#: Files whose hashes bundle.json records; all must be present.
BOUND_FILES = (
    "model.onnx",
    "model.safetensors",
    "model.json",
    "critical_index",
    "class_stats.safetensors",
    "preprocess.json",
)
#: trained: the host's Linear head; lda: from the statistics (the device path); routed: the host's class-incremental
#: router (edgeslice increment), which the device path cannot rewrite (it refuses such a bundle in one line).
HEAD_KINDS = ("trained", "lda", "routed")
#: Heads that are one linear layer (Gemm, or MatMul + Add) ending model.onnx: only these grow on the device.
LINEAR_HEADS = ("trained", "lda")
HISTORY_OPS = ("compress", "increment", "add-class")


def bundle_document(
    folder: Path,
    *,
    classes: Sequence[str],
    fingerprint: str,
    feature_dim: int,
    classifier: Mapping[str, str],
    history: Sequence[Mapping[str, Any]],
    head: str,
) -> dict[str, Any]:
    """The ``bundle.json`` object for the files now in ``folder``."""
    if head not in HEAD_KINDS:
        raise BundleError(f"head must be one of {HEAD_KINDS}, not {head!r}")
    for entry in history:
        if entry.get("op") not in HISTORY_OPS or entry.get("path") not in ("host", "device"):
            raise BundleError(f"history entry {dict(entry)!r} has an unknown op or path")
    missing = [name for name in BOUND_FILES if not (folder / name).is_file()]
    if missing:
        raise BundleError(f"bundle {folder} lacks {', '.join(missing)}")
    return {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "classes": list(classes),
        "fingerprint": fingerprint,
        "feature_dim": int(feature_dim),
        "classifier": {"weight": str(classifier["weight"]), "bias": str(classifier["bias"])},
        "files": {name: sha256_file(folder / name) for name in BOUND_FILES},
        "history": [dict(e) for e in history],
        "head": head,
    }


def write_bundle_meta(
    folder: str | Path,
    *,
    classes: Sequence[str],
    preprocess: Preprocess | Mapping[str, Any],
    stats: ClassStatistics,
    classifier: Mapping[str, str],
    fingerprint: str,
    history: Sequence[Mapping[str, Any]],
    head: str = "trained",
    feature_dim: int | None = None,
) -> Path:
    """Write ``preprocess.json``, ``class_stats.safetensors`` and ``bundle.json`` into a folder holding the rest.

    Args:
        folder: the bundle folder, with model.onnx, model.safetensors, model.json and critical_index written.
        classes: class names in label order.
        preprocess: the eval transform (a :class:`Preprocess` or its ``preprocess.json`` dict).
        stats: class statistics over the classifier's input features, for the same classes.
        classifier: ``{"weight": "classifier.weight", "bias": "classifier.bias"}``, state-dict names.
        fingerprint: the checkpoint's fingerprint (model.json's).
        history: how the bundle was made, e.g. ``[{"op": "compress", "path": "host", "classes": [...], "images": n}]``.
        head: ``trained`` (by the host) or ``lda`` (from the statistics).
        feature_dim: width of the classifier's input; read from model.onnx when None.

    Returns:
        The path of bundle.json.

    Example:
        >>> write_bundle_meta(stage, classes=meta.classes, preprocess=Preprocess.from_data_config(dc), stats=stats,
        ...     classifier={"weight": "classifier.weight", "bias": "classifier.bias"}, fingerprint=meta.fingerprint,
        ...     history=[{"op": "compress", "path": "host", "classes": meta.classes, "images": 0}])  # doctest: +SKIP
    """
    folder = Path(folder)
    if list(stats.classes) != list(classes):
        raise BundleError("the class statistics describe other classes than the bundle")
    pre = preprocess if isinstance(preprocess, Preprocess) else Preprocess.from_dict(preprocess)
    if feature_dim is None:
        from .graph import find_classifier, load_model

        feature_dim = int(find_classifier(load_model((folder / "model.onnx").read_bytes())).weight.shape[1])
    write_durable(folder / "preprocess.json", canonical_json(pre.to_dict()))
    stats.save(folder / "class_stats.safetensors")
    doc = bundle_document(
        folder,
        classes=classes,
        fingerprint=fingerprint,
        feature_dim=feature_dim,
        classifier=classifier,
        history=history,
        head=head,
    )
    return write_durable(folder / "bundle.json", canonical_json(doc))


@dataclass(frozen=True)
class Bundle:
    """An opened, validated bundle.

    Attributes:
        path: the folder.
        doc: ``bundle.json``.
        meta: ``model.json``.
        index: the critical index (decompressed JSON).
        preprocess: the eval transform.
        stats: the class statistics.
    """

    path: Path
    doc: dict[str, Any]
    meta: dict[str, Any]
    index: dict[str, Any]
    preprocess: Preprocess
    stats: ClassStatistics

    @property
    def classes(self) -> list[str]:
        return list(self.doc["classes"])

    @property
    def fingerprint(self) -> str:
        return str(self.doc["fingerprint"])

    @property
    def feature_dim(self) -> int:
        return int(self.doc["feature_dim"])

    @property
    def classifier(self) -> dict[str, str]:
        return dict(self.doc["classifier"])

    def model_bytes(self) -> bytes:
        """The bytes of ``model.onnx``."""
        return (self.path / "model.onnx").read_bytes()

    def _check_linear_head(self, model_bytes: bytes) -> None:
        """The ONNX classifier has the bundle's shape and the checkpoint's classifier weights."""
        from .checkpoint import read_checkpoint
        from .graph import find_classifier, load_model

        tensors, _, _ = read_checkpoint(self.path)
        head = find_classifier(load_model(model_bytes))
        c, d = len(self.classes), self.feature_dim
        if head.weight.shape != (c, d):
            raise BundleError(f"model.onnx's classifier is {head.weight.shape}, the bundle says ({c}, {d})")
        for name, onnx_value in (("weight", head.weight), ("bias", head.bias)):
            key = self.classifier[name]
            if key not in tensors or tensors[key].dtype not in ("F32", "F64", "F16"):
                raise BundleError(f"model.safetensors has no floating classifier tensor {key!r}")
            if tensors[key].shape != onnx_value.shape or not np.allclose(
                tensors[key].numpy(), onnx_value, rtol=1e-5, atol=1e-6
            ):
                raise BundleError(f"model.onnx's classifier {name} differs from {key!r} in model.safetensors")

    def verify(self, run_model: bool = True) -> None:
        """Check what :func:`open_bundle` does not: the weights' fingerprint, the ONNX head against the checkpoint's
        (linear heads; a host-grown ``routed`` head is a subgraph, checked by its output only), and (``run_model``)
        that onnxruntime runs the model to ``len(classes)`` finite logits.

        Raises:
            BundleError: the first problem found.
        """
        from .checkpoint import read_checkpoint
        from .graph import session

        read_checkpoint(self.path)  # the weights match model.json's fingerprint
        model_bytes = self.model_bytes()
        c, d = len(self.classes), self.feature_dim
        if self.doc["head"] in LINEAR_HEADS:
            self._check_linear_head(model_bytes)
        if len(self.stats.dims) and int(self.stats.dims.max()) >= d:
            raise BundleError(f"class statistics cover features past the classifier's {d}")
        if run_model:
            sess = session(model_bytes)
            h, w = self.preprocess.input_size
            x = np.zeros((1, self.preprocess.channels, h, w), np.float32)  # one image: a device's memory
            try:
                logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
            except Exception as e:  # onnxruntime raises its own exception types
                raise BundleError(f"model.onnx does not run: {' '.join(str(e).split())[:300]}") from e
            if logits.shape != (1, c) or not np.isfinite(logits).all():
                raise BundleError(f"model.onnx gives logits of shape {logits.shape}, expected (1, {c}), finite")


def open_bundle(path: str | Path) -> Bundle:
    """Open a bundle, checking every bound file's hash and that all parts name the same classes and model.

    Raises:
        BundleError: not a bundle, a changed or missing file, or parts that disagree.

    Example:
        >>> bundle = open_bundle("out/bundle"); bundle.verify()  # doctest: +SKIP
    """
    from .index_file import read_index

    folder = Path(path)
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} does not exist or is not a folder")
    doc = read_json(folder / "bundle.json", "bundle description")
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT or doc.get("version") != BUNDLE_VERSION:
        raise BundleError(f"{folder} is not an edgeslice bundle version {BUNDLE_VERSION}")
    required = ("classes", "fingerprint", "feature_dim", "classifier", "files", "history", "head")
    if any(k not in doc for k in required) or not isinstance(doc["files"], dict):
        raise BundleError(f"bundle.json lacks one of {', '.join(required)}")
    for name in BOUND_FILES:
        p = folder / name
        if name not in doc["files"]:
            raise BundleError(f"bundle.json does not bind {name}")
        if not p.is_file():
            raise BundleError(f"bundle file {name} is missing")
        if sha256_file(p) != doc["files"][name]:
            raise BundleError(f"bundle file {name} was changed after the bundle was written (sha256 differs)")
    classes, fp = list(doc["classes"]), doc["fingerprint"]
    meta = read_json(folder / "model.json", "checkpoint sidecar")
    index = read_index(folder / "critical_index")
    if not isinstance(meta, dict) or meta.get("classes") != classes:
        raise BundleError("model.json names other classes than bundle.json")
    if meta.get("fingerprint") != fp:
        raise BundleError("model.json is for another model than bundle.json (fingerprints differ)")
    if index["classes"] != classes:
        raise BundleError("critical_index names other classes than bundle.json")
    if index["model_fingerprint"] != fp:
        raise BundleError("critical_index was sliced from another model than the bundle's (fingerprints differ)")
    stats = ClassStatistics.load(folder / "class_stats.safetensors", classes)
    pre = Preprocess.from_dict(read_json(folder / "preprocess.json", "preprocessing"))
    if meta.get("in_chans") is not None and int(meta["in_chans"]) != pre.channels:
        raise BundleError(f"preprocess.json reads {pre.channels} channel(s), model.json says {meta['in_chans']}")
    return Bundle(folder, doc, meta, index, pre, stats)
