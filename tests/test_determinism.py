"""Same recipe and seed → byte-identical artifacts and manifest (docs/artifacts.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeslice.artifacts.files import sha256_file
from edgeslice.cli import app
from edgeslice.pipeline.recipes import EFFECTIVE_NAME, load_recipe

runner = CliRunner()

TINY = """\
description = "the MLP on scikit-learn digits, small enough for a test"
model = "mlp"
data = "digits"
train_epochs = 1
finetune_epochs = 0.5
batch_size = 64
round_to = 1

[slicing]
theta = 0.95
calib_per_class = 5
"""

#: Everything but report.json (timings, latency) must repeat byte for byte.
DETERMINISTIC = (
    "critical_index",
    "critical_index.h",
    "model.safetensors",
    "model.json",
    "model.onnx",
    "critical_ratio.png",
    "source_index",
    "class_stats.safetensors",
    "preprocess.json",
    "bundle.json",
    EFFECTIVE_NAME,
    "manifest.json",
)


def _run(recipe: Path, out: Path, *args: str) -> dict:
    r = runner.invoke(
        app,
        ["run", str(recipe), "--out", str(out), "--device-type", "cpu", "--json", "--emit-c-header",
         "--set", "slicing.theta=0.9", *args],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _hashes(folder: Path) -> dict[str, str]:
    return {name: sha256_file(folder / name) for name in DETERMINISTIC}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text(TINY)
    return path


def test_same_recipe_and_seed_give_identical_bytes(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESLICE_HOME", str(tmp_path / "home"))
    first = _run(recipe, tmp_path / "a")  # trains the baseline
    second = _run(recipe, tmp_path / "b")  # the baseline comes from the cache
    assert first["baseline"]["from_cache"] is False and second["baseline"]["from_cache"] is True
    a, b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert a == b
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert set(manifest["files"]) == set(DETERMINISTIC) - {"manifest.json"}
    assert manifest["volatile"] == {"report.json": manifest["volatile"]["report.json"]}
    assert manifest["seed"] == 0 and manifest["versions"]["torch"] and manifest["tool"] == "edgeslice"
    assert manifest["torch_threads"] == 1  # conftest; the weights' bytes depend on it (docs/artifacts.md)
    assert str(tmp_path) not in (tmp_path / "a" / "manifest.json").read_text()  # no output paths in it
    # The effective configuration is the recipe after --set, and loads again as a recipe.
    effective = load_recipe(tmp_path / "a" / EFFECTIVE_NAME)
    assert effective.slicing.theta == 0.9 and effective.to_dict() == manifest["config"]
    assert first["slicing"]["theta"] == 0.9

    # Another θ changes the index and therefore the manifest: the equality above is not vacuous.
    _run(recipe, tmp_path / "c", "--set", "slicing.theta=0.8", "--threads", "2")
    c = _hashes(tmp_path / "c")
    assert c["critical_index"] != a["critical_index"] and c["manifest.json"] != a["manifest.json"]
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["torch_threads"] == 2


def test_retraining_from_scratch_repeats_the_weights(recipe, tmp_path, monkeypatch):
    """A fresh $EDGESLICE_HOME (elsewhere) retrains the baseline: every hashed artifact still repeats, model.json
    and the manifest included (the baseline is recorded relative to $EDGESLICE_HOME)."""
    monkeypatch.setenv("EDGESLICE_HOME", str(tmp_path / "home"))
    first = _run(recipe, tmp_path / "a")
    monkeypatch.setenv("EDGESLICE_HOME", str(tmp_path / "other-home"))
    second = _run(recipe, tmp_path / "b")
    assert first["baseline"]["from_cache"] is False and second["baseline"]["from_cache"] is False
    a, b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    for name in ("critical_index", "critical_index.h", "model.safetensors", "model.onnx", "critical_ratio.png",
                 "model.json", "manifest.json"):  # fmt: skip
        assert a[name] == b[name], name
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    assert meta["info"]["baseline"].startswith("$EDGESLICE_HOME/baselines/")


def test_device_recipe_with_int8_repeats_and_verifies(recipe, tmp_path, monkeypatch):
    """With a device (θ searched against its budgets) and int8: the quantized ONNX file repeats too."""
    pytest.importorskip("edgeslice.deploy.quantize")
    monkeypatch.setenv("EDGESLICE_HOME", str(tmp_path / "home"))
    args = ("--set", "device=rpi4", "--set", "quantize=int8")
    first = _run(recipe, tmp_path / "a", *args)
    _run(recipe, tmp_path / "b", *args)
    names = (*DETERMINISTIC, "model.int8.onnx")
    assert {n: sha256_file(tmp_path / "a" / n) for n in names} == {n: sha256_file(tmp_path / "b" / n) for n in names}
    assert first["config"]["device"] == "rpi4"
    # The effective recipe and the manifest hold the θ the budget search chose, not the recipe's.
    effective = load_recipe(tmp_path / "a" / EFFECTIVE_NAME)
    assert effective.slicing.theta == first["budget"]["theta"] != 0.9 and effective.quantize == "int8"
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["config"] == effective.to_dict()
    r = runner.invoke(app, ["verify", str(tmp_path / "a"), "--json"])
    assert r.exit_code == 0, r.output
    checks = {c["name"]: c["status"] for c in json.loads(r.stdout)["checks"]}
    assert checks["onnx model.int8.onnx"] == "ok" and checks["budget flash"] == "ok" and "budgets" not in checks
