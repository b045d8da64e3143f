"""Fixtures of the device runtime's tests: one trained test bundle per session, copied per test."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DEVICE_DIR = Path(__file__).resolve().parents[2] / "device"
if str(DEVICE_DIR) not in sys.path:  # the device distribution may not be installed in the host env
    sys.path.insert(0, str(DEVICE_DIR))

from . import _build  # noqa: E402

#: Runs ``edgeslice_device.cli.main`` where torch, timm, torch_pruning, captum, sklearn, matplotlib and the host
#: package cannot be imported (a meta-path finder refuses them), as on a device.
TORCH_FREE_MAIN = f"""
import importlib.abc, sys
BLOCKED = {{"torch", "timm", "torch_pruning", "captum", "sklearn", "matplotlib", "edgeslice", "safetensors"}}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed on this device")
sys.meta_path.insert(0, Refuse())
sys.path.insert(0, {str(DEVICE_DIR)!r})
from edgeslice_device.cli import main
sys.exit(main(sys.argv[1:]))
"""
NEW_IMAGES = 20  # images of each class added on the device (few-shot, as on a device)


@pytest.fixture(scope="session")
def digit_data() -> dict[str, np.ndarray]:
    images, labels = _build.digits()
    train, test = _build.split(labels)
    return {"images": images, "labels": labels, "train": train, "test": test}


@pytest.fixture(scope="session")
def base_bundle(
    tmp_path_factory: pytest.TempPathFactory, digit_data: dict[str, np.ndarray], learning_seed: int
) -> Path:
    """A bundle of the CNN trained on digits 0-4 (built once; tests copy it)."""
    import torch

    torch.set_num_threads(1)
    images, labels, train = digit_data["images"], digit_data["labels"], digit_data["train"]
    keep = train[labels[train] < len(_build.BASE_CLASSES)]
    folder = tmp_path_factory.mktemp("base") / "bundle"
    _build.build_bundle(folder, images[keep], labels[keep], seed=learning_seed)
    return folder


@pytest.fixture()
def bundle(base_bundle: Path, tmp_path: Path) -> Path:
    """A fresh copy of the test bundle, at ``tmp_path/bundle``."""
    return Path(shutil.copytree(base_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def class_dirs(tmp_path_factory: pytest.TempPathFactory, digit_data: dict[str, np.ndarray]) -> dict[str, Path]:
    """``NEW_IMAGES`` training PNGs of each digit 5-9, one folder per digit."""
    root = tmp_path_factory.mktemp("new-classes")
    images, labels, train = digit_data["images"], digit_data["labels"], digit_data["train"]
    dirs = {}
    for digit in range(5, 10):
        d = root / f"digit{digit}"
        d.mkdir()
        for j, i in enumerate(train[labels[train] == digit][:NEW_IMAGES]):
            _build.save_png(images[i], d / f"{j:03d}.png")
        dirs[str(digit)] = d
    return dirs


@pytest.fixture(scope="session")
def test_pngs(tmp_path_factory: pytest.TempPathFactory, digit_data: dict[str, np.ndarray]) -> dict[str, list[Path]]:
    """30 held-out PNGs of every digit 0-9."""
    root = tmp_path_factory.mktemp("test-images")
    images, labels, test = digit_data["images"], digit_data["labels"], digit_data["test"]
    out: dict[str, list[Path]] = {}
    for digit in range(10):
        out[str(digit)] = [
            _build.save_png(images[i], root / f"{digit}-{j:03d}.png")
            for j, i in enumerate(test[labels[test] == digit][:30])
        ]
    return out


def device_env(**extra: str) -> dict[str, str]:
    """The environment of a device subprocess: one onnxruntime thread (the CPUs are shared), plus ``extra``."""
    return {**os.environ, "EDGESLICE_DEVICE_THREADS": "1", **extra}


def run_device(*args: str | Path, **env: str) -> subprocess.CompletedProcess:
    """``edgeslice-device ARGS`` in a torch-free subprocess; returns the finished process (text output)."""
    cmd = [sys.executable, "-c", TORCH_FREE_MAIN, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=device_env(**env), timeout=120)


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative names), to compare a bundle before and after."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
