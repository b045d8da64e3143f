"""Test bundles: a tiny CNN trained on five digits of sklearn's ``load_digits``, packed as ``edgeslice compress``
would (model.onnx, model.safetensors + model.json, critical_index), then ``write_bundle_meta``.

Digits are upsampled 8 → 16 px (nearest) and saved as 8-bit PNGs, so the device reads exactly the training pixels.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

SIZE = 16
MEAN, STD = 0.5, 0.5
BASE_CLASSES = [str(d) for d in range(5)]  # the host trains on these; tests add 5..9 on the device


class TinyCNN(nn.Module):
    """conv-BN-ReLU ×3 → global average pool → Linear (the classifier reads 48 features)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout, stride in ((1, 16, 1), (16, 32, 2), (32, 48, 2)):
            layers += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(n, 16, 16) uint8 images and (n,) labels of sklearn's digits."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.kron(d.images, np.ones((2, 2)))  # (n, 16, 16), values 0..16
    return np.clip(np.rint(imgs * (255 / 16)), 0, 255).astype(np.uint8), d.target.astype(np.int64)


def split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Even/odd positions within each class: (train indices, test indices)."""
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        train += list(idx[0::2])
        test += list(idx[1::2])
    return np.array(train), np.array(test)


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W) → normalised float32 (n, 1, H, W), as preprocess.json describes."""
    return ((images.astype(np.float32) / np.float32(255) - np.float32(MEAN)) / np.float32(STD))[:, None]


def train_model(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> TinyCNN:
    """Full-batch Adam, 40 steps: separates the five digits cleanly (0.995 test accuracy, seed 0)."""
    torch.manual_seed(seed)
    model = TinyCNN(num_classes)
    x, y = torch.from_numpy(to_input(images)), torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def save_png(array: np.ndarray, path: Path, mode: str = "L") -> Path:
    from PIL import Image

    Image.fromarray(array).convert(mode).save(path)
    return path


def critical_index(model: nn.Module, classes: list[str], fp: str) -> bytes:
    """A small version-2 index over the three convolutions, with per-class sets (what the host writes)."""
    from edgeslice.index import CriticalIndex

    g = torch.Generator().manual_seed(0)
    layers, critical, per_class = [], {}, {}
    for i, name in enumerate(("features.0", "features.3", "features.6")):
        n = (16, 32, 48)[i]
        rows = torch.rand(len(classes), n, generator=g) < 0.3
        layers.append({"name": name, "observe": name, "channels": n})
        per_class[name], critical[name] = rows, rows.any(0)
    index = CriticalIndex(fp, "tinycnn", layers, critical, per_class, list(classes), params={"strategy": "semantic"})
    return index.to_bytes()


def build_bundle(
    folder: Path, images: np.ndarray, labels: np.ndarray, *, manifest: bool = True, seed: int = 0
) -> nn.Module:
    """Write a complete bundle of a model trained on ``labels`` 0..4 into ``folder``; returns the model."""
    from edgeslice_device import ClassStatistics, Preprocess, write_bundle_meta
    from edgeslice_device.graph import feature_session, run_features
    from safetensors.torch import save_file

    from edgeslice.artifacts.files import canonical_json
    from edgeslice.artifacts.manifest import write_manifest
    from edgeslice.models import fingerprint, module_shapes

    folder.mkdir(parents=True)
    model = train_model(images, labels, len(BASE_CLASSES), seed=seed)
    x = torch.from_numpy(to_input(images[:2]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model, (x,), str(folder / "model.onnx"), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
        )  # fmt: skip
    fp = fingerprint(model)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors", {"fingerprint": fp}
    )
    meta = {
        "version": 1, "timm_name": "tinycnn", "classes": BASE_CLASSES, "in_chans": 1, "input_size": SIZE,
        "mean": [MEAN], "std": [STD], "shapes": module_shapes(model), "fingerprint": fp, "restructured": False,
        "info": {},
    }  # fmt: skip
    (folder / "model.json").write_bytes(canonical_json(meta))
    (folder / "critical_index").write_bytes(critical_index(model, BASE_CLASSES, fp))
    (folder / "report.json").write_text("{}\n")
    _, feats = run_features(feature_session((folder / "model.onnx").read_bytes()), to_input(images))
    stats = ClassStatistics.from_features(feats, labels, BASE_CLASSES)
    pre = Preprocess.from_data_config({"input_size": (1, SIZE, SIZE), "crop_pct": 1.0, "mean": [MEAN], "std": [STD]})
    write_bundle_meta(
        folder, classes=BASE_CLASSES, preprocess=pre, stats=stats,
        classifier={"weight": "classifier.weight", "bias": "classifier.bias"}, fingerprint=fp,
        history=[{"op": "compress", "path": "host", "classes": BASE_CLASSES, "images": int(len(labels))}],
    )  # fmt: skip
    if manifest:
        write_manifest(folder, {"command": "compress"}, 0)
    return model
