"""--classes: names, labels and ranges in spec order; a clear error for anything else."""

from __future__ import annotations

import pytest
import torch

from edgeslice.classes import parse_classes, select_classes
from edgeslice.data import ArrayDataset, DataBundle, targets_of
from edgeslice.errors import EdgesliceError

NAMES = ["cat", "dog", "T-shirt/top", "bird", "fish"]


@pytest.mark.parametrize(
    ("spec", "labels"),
    [("0-2", [0, 1, 2]), ("dog,cat", [1, 0]), ("T-shirt/top, 4", [2, 4]), ("3,0-1", [3, 0, 1]), ("fish,", [4])],
)
def test_parse_classes(spec, labels):
    assert parse_classes(spec, NAMES) == labels


@pytest.mark.parametrize(
    ("spec", "message"),
    [("5", "out of range"), ("3-1", "not within"), ("0-9", "not within"), ("cow", "not a class"),
     ("0,cat", "twice"), (" , ", "no class")],
)  # fmt: skip
def test_parse_classes_refuses(spec, message):
    with pytest.raises(EdgesliceError, match=message):
        parse_classes(spec, NAMES)


def test_select_classes_relabels_in_spec_order():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).repeat(1, 1, 2, 2)
    ds = ArrayDataset(images, torch.arange(10) % 5)
    bundle = DataBundle("toy", ds, ds, list(NAMES), 1, 2, (0.5,), (0.5,), "test")
    sub = select_classes(bundle, "fish,cat")
    assert sub.classes == ["fish", "cat"]
    assert targets_of(sub.train).tolist() == [1, 0, 1, 0]  # items 0, 4, 5, 9 in order: cat, fish, cat, fish
    assert select_classes(bundle, None) is bundle
    with pytest.raises(EdgesliceError, match="at least 2"):
        select_classes(bundle, "cat", min_classes=2)


def test_train_and_slice_take_a_class_subset(tmp_path):
    import json

    from typer.testing import CliRunner

    from edgeslice.cli import app
    from edgeslice.index import CriticalIndex

    runner = CliRunner()
    ck = tmp_path / "ck"
    r = runner.invoke(app, ["train", "mlp", "--data", "digits", "--classes", "7,0-2", "--epochs", "1", "--out", str(ck),
                            "--device-type", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads((ck / "model.json").read_text())["classes"] == ["7", "0", "1", "2"]
    r = runner.invoke(app, ["slice", "mlp", "--checkpoint", str(ck / "model.safetensors"), "--data", "digits",
                            "--classes", "7,0-2", "--calib-per-class", "5", "--out", str(tmp_path / "s"),
                            "--device-type", "cpu"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert CriticalIndex.load(tmp_path / "s" / "critical_index").classes == ["7", "0", "1", "2"]
    r = runner.invoke(app, ["slice", "mlp", "--checkpoint", str(ck / "model.safetensors"), "--data", "digits",
                            "--classes", "0-2,7", "--out", str(tmp_path / "t"), "--device-type", "cpu"])  # fmt: skip
    assert r.exit_code == 1 and "differ from the data's" in r.stderr  # same classes, other order: other labels
