"""``add-class``: grow a bundle by one class on the device, from a folder of images, without torch.

The images' features (the classifier's input, computed by the bundle's ONNX model) extend the class statistics,
and the linear discriminant over all classes becomes the new head. Every file that names the classes or the
weights is rewritten in step (model.onnx, the host checkpoint and its fingerprint, the critical index, the
statistics, bundle.json and manifest.json), in a staging folder that then replaces the bundle atomically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _commit
from ._files import canonical_json, sha256_file, write_durable
from .bundle import LINEAR_HEADS, Bundle, bundle_document, open_bundle
from .checkpoint import grow_checkpoint, read_checkpoint
from .errors import BundleError
from .graph import feature_session, load_model, run_features, session, with_head
from .images import DEFAULT_MIN_IMAGES, batch_size_for, list_images, read_pixels
from .index_file import grow_index, index_bytes
from .safetensors_io import dumps
from .stats import DEFAULT_SHRINKAGE


@dataclass(frozen=True)
class AddClassReport:
    """What :func:`add_class` did.

    Attributes:
        bundle: the bundle folder.
        name: the class added.
        classes: all classes now.
        images: images the class was learned from.
        fingerprint: the new checkpoint fingerprint.
        new_class_recall: share of those images the new model assigns to the new class.
    """

    bundle: str
    name: str
    classes: list[str]
    images: int
    fingerprint: str
    new_class_recall: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _check_name(name: str, classes: list[str]) -> None:
    if not name or name != name.strip() or any(ch in name for ch in "\n\r\t\0"):
        raise BundleError(f"class name {name!r} is empty or has surrounding or control whitespace")
    if name in classes:
        raise BundleError(f"class {name!r} is already in the bundle")


def add_class(
    bundle_path: str | Path,
    images_dir: str | Path,
    name: str,
    *,
    min_images: int = DEFAULT_MIN_IMAGES,
    shrinkage: float = DEFAULT_SHRINKAGE,
    batch: int | None = None,
) -> AddClassReport:
    """Add class ``name``, learned from the images in ``images_dir``, to the bundle at ``bundle_path`` (in place).

    Everything is checked before anything is written; the bundle is replaced atomically at the end, so it is the
    old bundle or the new one, whole, if the process dies at any point.

    Raises:
        BundleError: an invalid bundle, name or image, too few images, or a read-only bundle (nothing changed).

    Example:
        >>> add_class("bundle", "photos/fox", "fox").classes[-1]  # doctest: +SKIP
        'fox'
    """
    folder = Path(bundle_path).absolute()
    _commit.recover(folder)
    bundle = open_bundle(folder)
    bundle.verify(run_model=True)
    if bundle.doc["head"] not in LINEAR_HEADS:
        raise BundleError(
            f"bundle's head is {bundle.doc['head']!r} (grown by the host); the device grows only a linear head"
        )
    _check_name(name, bundle.classes)
    files = list_images(images_dir, min_images=min_images)
    x = read_pixels(files, bundle.preprocess)  # uint8 (n, C, H, W); every image checked before any work
    batch = batch or batch_size_for(x.shape[1:])
    stage = _commit.create_staging(folder)
    try:
        report = _build(bundle, stage, name, x, shrinkage=shrinkage, batch=batch)
        _commit.swap_in(folder, stage)
    except BaseException:
        _commit.abort(folder, stage)
        raise
    return report


def _build(bundle: Bundle, stage: Path, name: str, x: np.ndarray, *, shrinkage: float, batch: int) -> AddClassReport:
    """Write the grown bundle into ``stage`` and check it; returns the report."""
    model_bytes = bundle.model_bytes()
    _, feats = run_features(feature_session(model_bytes), x, batch, bundle.preprocess.normalize)
    if feats.shape[1] != bundle.feature_dim:
        raise BundleError(f"the model's features have {feats.shape[1]} dims, bundle.json says {bundle.feature_dim}")
    classes = [*bundle.classes, name]
    stats = bundle.stats.add_class(name, feats)
    w, b = stats.lda_head(bundle.feature_dim, shrinkage)
    new_model = with_head(load_model(model_bytes), w, b).SerializeToString()
    tensors, st_meta, meta = read_checkpoint(bundle.path)
    tensors, st_meta, meta = grow_checkpoint(
        tensors, st_meta, meta, classifier=bundle.classifier, weight=w, bias=b, classes=classes
    )
    fingerprint = meta["fingerprint"]
    changed = {
        "model.onnx": new_model,
        "model.safetensors": dumps(tensors, st_meta),
        "model.json": canonical_json(meta),
        "critical_index": index_bytes(grow_index(bundle.index, name, fingerprint)),
        "class_stats.safetensors": stats.to_bytes(),
    }
    for fname, data in changed.items():
        write_durable(stage / fname, data)
    _commit.pause_point("staging-partial")
    for src in sorted(bundle.path.iterdir()):
        if src.is_file() and src.name not in changed and src.name not in ("bundle.json", "manifest.json"):
            _commit.link_or_copy(src, stage / src.name)
    history = [*bundle.doc["history"], {"op": "add-class", "path": "device", "classes": [name], "images": len(x)}]
    doc = bundle_document(
        stage,
        classes=classes,
        fingerprint=fingerprint,
        feature_dim=bundle.feature_dim,
        classifier=bundle.classifier,
        history=history,
        head="lda",
    )
    write_durable(stage / "bundle.json", canonical_json(doc))
    _update_manifest(bundle.path, stage, [*changed, "bundle.json"])
    open_bundle(stage).verify(run_model=True)
    sess = session(new_model)
    inp = sess.get_inputs()[0].name
    norm = bundle.preprocess.normalize
    logits = np.concatenate([sess.run(None, {inp: norm(x[i : i + batch])})[0] for i in range(0, len(x), batch)])
    if logits.shape[1] != len(classes):
        raise BundleError(f"the new model gives {logits.shape[1]} logits for {len(classes)} classes")
    recall = float(np.mean(logits.argmax(1) == len(classes) - 1))
    return AddClassReport(str(bundle.path), name, classes, len(x), fingerprint, recall)


def _update_manifest(old: Path, stage: Path, changed: list[str]) -> None:
    """Copy ``manifest.json`` into ``stage`` with the sha256 and size of the changed files updated (if it exists)."""
    path = old / "manifest.json"
    if not path.is_file():
        return
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"cannot read manifest.json: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise BundleError("manifest.json has no files table")
    for fname in changed:
        p = stage / fname
        entry = doc["files"].get(fname)
        doc["files"][fname] = {
            **(entry if isinstance(entry, dict) else {}),
            "sha256": sha256_file(p),
            "bytes": p.stat().st_size,
        }
    write_durable(stage / "manifest.json", canonical_json(doc))
