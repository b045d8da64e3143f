"""``edgeslice verify`` on a fresh compress output, and on outputs with a changed, missing or extra file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeslice.artifacts.manifest import read_manifest, write_manifest
from edgeslice.artifacts.verify import verify
from edgeslice.cli import app
from edgeslice.index import CriticalIndex

runner = CliRunner()


@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("verify") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before conftest's per-test home and threads
        mp.setenv("EDGESLICE_HOME", str(tmp_path_factory.getbasetemp() / "edgeslice-home"))
        r = runner.invoke(
            app,
            ["compress", "mlp", "--data", "digits", "--train-epochs", "1", "--finetune-epochs", "0.5", "--batch-size",
             "64", "--calib-per-class", "5", "--theta", "0.9", "--round-to", "1", "--device-type", "cpu", "--json",
             "--out", str(out)],
        )  # fmt: skip
    torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    source = json.loads(r.stdout)["baseline"]["source"]  # recorded relative to the cache: repeatable bytes
    assert source.startswith("$EDGESLICE_HOME/baselines/")
    assert (tmp_path_factory.getbasetemp() / "edgeslice-home" / source.removeprefix("$EDGESLICE_HOME/")).is_file()
    return out


@pytest.fixture()
def folder(compressed, tmp_path) -> Path:
    """A private copy of the compress output, free to damage."""
    return Path(shutil.copytree(compressed, tmp_path / "artifacts"))


def _verify(path: Path, *extra: str):
    r = runner.invoke(app, ["verify", str(path), "--json", *extra])
    doc = json.loads(r.stdout) if r.stdout.strip() else None
    return r, doc


def _status(doc) -> dict[str, str]:
    return {c["name"]: c["status"] for c in doc["checks"]}


def test_fresh_compress_output_passes(folder):
    r, doc = _verify(folder)
    assert r.exit_code == 0, r.output
    assert doc["ok"] is True
    status = _status(doc)
    for name in ("model.onnx", "model.safetensors", "model.json", "critical_index", "critical_ratio.png"):
        assert status[f"file {name}"] == "ok"
    assert status["file report.json"] == "ok"  # volatile: present, not hashed
    assert status["checkpoint"] == status["onnx model.onnx"] == status["index"] == status["report"] == "ok"
    budgets = next(c for c in doc["checks"] if c["name"] == "budgets")
    assert budgets["status"] == "skip" and budgets["detail"] == "not checked (no device)"
    human = runner.invoke(app, ["verify", str(folder)])
    assert human.exit_code == 0 and "all checks passed" in human.stdout and "budgets" in human.stdout


@pytest.mark.parametrize("name", ["model.onnx", "critical_index", "model.safetensors"])
def test_tampered_file_fails_and_is_named(folder, name):
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    (folder / name).write_bytes(bytes(data))
    r, doc = _verify(folder)
    assert r.exit_code == 1
    assert _status(doc)[f"file {name}"] == "fail"
    assert name in r.stderr and "Traceback" not in r.output
    assert [c["detail"] for c in doc["checks"] if c["name"] == f"file {name}"] == [
        "changed: sha256 differs from the manifest"
    ]


def test_missing_and_extra_files_fail(folder):
    (folder / "critical_index").unlink()
    (folder / "notes.txt").write_text("added later")
    r, doc = _verify(folder)
    assert r.exit_code == 1
    status = _status(doc)
    assert status["file critical_index"] == "fail" and status["file notes.txt"] == "fail"
    assert "critical_index" in r.stderr and "notes.txt" in r.stderr


def test_report_must_match_the_checkpoint(folder):
    report = json.loads((folder / "report.json").read_text())
    report["params_after"] += 1  # report.json is not hashed (timings), but its claims are checked
    (folder / "report.json").write_text(json.dumps(report))
    r, doc = _verify(folder)
    assert r.exit_code == 1 and _status(doc)["report"] == "fail"


def test_index_of_another_model_fails_even_with_a_rewritten_manifest(folder):
    index = CriticalIndex.load(folder / "critical_index")
    index.model_fingerprint = "0" * 64
    index.save(folder / "critical_index")
    manifest = read_manifest(folder)
    write_manifest(folder, manifest["config"], manifest["seed"])  # hashes agree again
    result = verify(folder)
    assert not result.ok and [c.name for c in result.failed] == ["index"]
    assert "neither this checkpoint" in result.failed[0].detail


def test_no_manifest_is_a_one_line_error(tmp_path):
    r, doc = _verify(tmp_path)
    assert r.exit_code == 1 and doc["ok"] is False
    assert "manifest.json" in r.stderr and "not found" in doc["checks"][0]["detail"]
    r = runner.invoke(app, ["verify", str(tmp_path / "nope")])
    assert r.exit_code == 2


def test_budgets_of_the_configured_device(folder, tmp_path):
    pytest.importorskip("edgeslice.deploy.budget")
    manifest = read_manifest(folder)
    write_manifest(folder, {**manifest["config"], "device": "rpi4"}, manifest["seed"])
    r, doc = _verify(folder)
    assert r.exit_code == 0, r.output
    assert {"budget flash", "budget ram", "budget latency", "budget precision"} <= set(_status(doc))
    assert all(s == "ok" for n, s in _status(doc).items() if n.startswith("budget "))
    # A profile the model cannot fit: 1 KiB of flash.
    profile = (Path(__file__).parents[2] / "devices" / "rpi4.toml").read_text()
    tiny = tmp_path / "tiny.toml"
    tiny.write_text(profile.replace('flash = "64 MiB"', 'flash = "1 KiB"').replace('name = "rpi4"', 'name = "tiny"'))
    write_manifest(folder, {**manifest["config"], "device": str(tiny)}, manifest["seed"])
    r, doc = _verify(folder)
    assert r.exit_code == 1 and _status(doc)["budget flash"] == "fail" and "budget flash" in r.stderr


def test_manifest_cannot_point_outside_the_folder(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["../outside"] = {"sha256": "0" * 64, "bytes": 1}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    r, doc = _verify(folder)
    assert r.exit_code == 1 and doc["checks"][0]["name"] == "manifest" and "'../outside'" in doc["checks"][0]["detail"]


# --- a second runtime: verify --runtime openvino -------------------------------------------------------------------


def test_openvino_without_the_extra_is_a_one_line_error(folder, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    r = runner.invoke(app, ["verify", str(folder), "--runtime", "openvino", "--json"])
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "pip install 'edgeslice[openvino]'" in r.stderr
    assert "Traceback" not in r.output


def _with_int8(folder: Path) -> Path:
    """Add an int8 copy of model.onnx (calibrated on seeded random inputs: enough to run it) and re-hash."""
    import numpy as np

    from edgeslice.deploy.quantize import quantize_int8

    meta = json.loads((folder / "model.json").read_text())
    calib = np.random.default_rng(0).random((32, meta["in_chans"], meta["input_size"], meta["input_size"]), "float32")
    quantize_int8(folder / "model.onnx", folder / "model.int8.onnx", [calib])
    manifest = read_manifest(folder)
    write_manifest(folder, manifest["config"], manifest["seed"])
    return folder


def test_openvino_checks_fp32_and_int8_in_f32(folder):
    pytest.importorskip("openvino")
    _with_int8(folder)
    r, doc = _verify(folder, "--runtime", "openvino")
    assert r.exit_code == 0, r.output
    status = _status(doc)
    assert status["onnx model.onnx (openvino)"] == status["onnx model.int8.onnx (openvino)"] == "ok"
    assert "onnx model.onnx" not in status  # the ONNX checks ran in OpenVINO, not onnxruntime
    runtime = doc["runtime"]
    assert runtime["name"] == "openvino" and runtime["precision"] == "f32"
    assert runtime["forced"] == "INFERENCE_PRECISION_HINT=f32" and "bf16" in runtime["why"]
    assert runtime["cpu_default_precision"] in ("f32", "bf16", "f16")
    fp32 = next(c["detail"] for c in doc["checks"] if c["name"] == "onnx model.onnx (openvino)")
    assert "= PyTorch: max |Δ|" in fp32 and "top-1 agreement" in fp32
    int8 = next(c["detail"] for c in doc["checks"] if c["name"] == "onnx model.int8.onnx (openvino)")
    assert "vs onnxruntime on this file" in int8
    human = runner.invoke(app, ["verify", str(folder), "--runtime", "openvino"])
    assert human.exit_code == 0 and "precision f32" in human.stdout and "INFERENCE_PRECISION_HINT=f32" in human.stdout


def test_openvino_parity_compares_with_the_reference(folder):
    pytest.importorskip("openvino")
    _with_int8(folder)
    # The quantized file in place of model.onnx (manifest re-hashed): it runs, but it is not the fp32 model.
    (folder / "model.onnx").write_bytes((folder / "model.int8.onnx").read_bytes())
    manifest = read_manifest(folder)
    write_manifest(folder, manifest["config"], manifest["seed"])
    r, doc = _verify(folder, "--runtime", "openvino")
    assert r.exit_code == 1 and _status(doc)["onnx model.onnx (openvino)"] == "fail"
    assert "parity needs max |Δ|" in r.stderr and "Traceback" not in r.output
