"""The command line, end to end on a small real data set (scikit-learn digits) and a small timm model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeslice._io import sha256_file
from edgeslice.cli import app
from edgeslice.index import CriticalIndex
from edgeslice.models import load_checkpoint

MODEL = "mobilenetv3_small_050"
runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train")
    r = _run("train", MODEL, "--data", "digits", "--epochs", "8", "--batch-size", "64", "--lr", "0.01",
             "--out", str(out), "--device-type", "cpu", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["test_accuracy"] > 50.0  # learned something (chance is 10%)
    return out


def test_train_writes_checkpoint(trained):
    model, meta = load_checkpoint(trained / "model.safetensors")
    assert meta.timm_name == MODEL and meta.in_chans == 1 and len(meta.classes) == 10
    assert meta.info["data"]["name"] == "digits"


def test_slice_is_deterministic(trained, tmp_path):
    args = ["slice", MODEL, "--checkpoint", str(trained / "model.safetensors"), "--data", "digits",
            "--calib-per-class", "10", "--theta", "0.9", "--device-type", "cpu", "--json"]
    r1 = _run(*args, "--out", str(tmp_path / "a"))
    r2 = _run(*args, "--out", str(tmp_path / "b"))
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a, b = (tmp_path / "a" / "critical_index").read_bytes(), (tmp_path / "b" / "critical_index").read_bytes()
    assert a == b
    doc = json.loads(r1.stdout)
    assert 0 < doc["critical_channels"] < doc["total_channels"]
    assert (tmp_path / "a" / "critical_ratio.png").read_bytes()[:4] == b"\x89PNG"
    model, meta = load_checkpoint(trained)
    idx = CriticalIndex.load(tmp_path / "a" / "critical_index")
    from edgeslice.slicing import find_layers

    layers = find_layers(model, torch.zeros(1, 1, 32, 32))
    idx.check_model(meta.timm_name, [{"name": la.name, "channels": la.channels} for la in layers], meta.fingerprint)
    assert idx.params["theta"] == 0.9 and idx.calibration["per_class"] == 10
    # A higher θ never selects fewer channels.
    r3 = _run(*[a if a != "0.9" else "0.99" for a in args], "--out", str(tmp_path / "c"))
    assert json.loads(r3.stdout)["critical_channels"] >= doc["critical_channels"]


def test_compress_end_to_end(trained, tmp_path):
    out = tmp_path / "out"
    r = _run("compress", MODEL, "--checkpoint", str(trained / "model.safetensors"), "--data", "digits",
             "--theta", "0.9", "--calib-per-class", "10", "--finetune-epochs", "1", "--out", str(out),
             "--device-type", "cpu", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # stdout is one JSON document and nothing else
    expected = {"model.onnx", "model.safetensors", "model.json", "critical_index", "report.json", "manifest.json",
                "critical_ratio.png"}
    assert expected == {p.name for p in out.iterdir()}
    assert report["params_after"] < report["params_before"]
    assert report["onnx_parity_max_abs"] <= 1e-4
    assert report["restructure_equivalence_max_abs"] < 1e-3
    assert report["onnx_after"]["raw_bytes"] < report["onnx_before"]["raw_bytes"]
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert sha256_file(out / name) == entry["sha256"]
    assert set(manifest["files"]) == expected - {"manifest.json"}
    # The restructured checkpoint loads without pickle and agrees with the ONNX file.
    model, meta = load_checkpoint(out)
    assert meta.restructured and sum(p.numel() for p in model.parameters()) == report["params_after"]
    import onnxruntime as ort

    x = torch.rand(4, 1, 32, 32)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    assert abs(sess.run(None, {"input": x.numpy()})[0] - ref).max() < 1e-4
    idx = CriticalIndex.load(out / "critical_index")
    assert idx.model_fingerprint == load_checkpoint(trained)[1].fingerprint


def test_compress_human_output(trained, tmp_path):
    r = _run("compress", MODEL, "--checkpoint", str(trained), "--data", "digits", "--calib-per-class", "5",
             "--finetune-epochs", "0", "--out", str(tmp_path / "o"), "--device-type", "cpu")
    assert r.exit_code == 0, r.output
    assert "compression rate" in r.stdout and "ONNX size" in r.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["compress", "no-such-model", "--data", "digits"], 1, "unknown model"),
        (["compress", MODEL, "--data", "digits", "--theta", "1.5"], 2, "(0, 1]"),
        (["compress", MODEL, "--data", "digits", "--theta", "0"], 2, "(0, 1]"),
        (["compress", MODEL, "--data", "/no/such/folder"], 1, "not found"),
        (["train", MODEL, "--data", "imagenet-21k"], 1, "unknown dataset"),
        (["compress", MODEL, "--device-type", "tpu"], 2, "tpu"),
    ],
)
def test_bad_input(tmp_path, args, code, message):
    out = tmp_path / "out"
    r = _run(*args, "--out", str(out))
    assert r.exit_code == code
    assert message in r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    if code == 1:
        assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_truncated_checkpoint(trained, tmp_path):
    bad = tmp_path / "ck"
    bad.mkdir()
    (bad / "model.json").write_bytes((trained / "model.json").read_bytes())
    raw = (trained / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 3])
    out = tmp_path / "out"
    r = _run("compress", MODEL, "--checkpoint", str(bad / "model.safetensors"), "--data", "digits", "--out", str(out))
    assert r.exit_code == 1 and "cannot read checkpoint" in r.stderr
    assert not out.exists()
    r = _run("compress", "resnet18", "--checkpoint", str(trained / "model.safetensors"), "--data", "digits",
             "--out", str(out))
    assert r.exit_code == 1 and "not 'resnet18'" in r.stderr


def test_version_and_help():
    r = _run("--version")
    assert r.exit_code == 0 and r.stdout.startswith("edgeslice ")
    r = _run("--help")
    for cmd in ("train", "slice", "compress"):
        assert cmd in r.stdout


def test_compress_with_iterative_pruning(trained, tmp_path):
    out = tmp_path / "out"
    r = _run("compress", MODEL, "--checkpoint", str(trained), "--data", "digits", "--theta", "0.9",
             "--calib-per-class", "5", "--finetune-epochs", "0.5", "--pruner", "lamp", "--max-iterations", "2",
             "--finetune-steps", "3", "--max-acc-drop", "100", "--out", str(out), "--device-type", "cpu", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["pruning"]["iterations"] == 2 and rep["pruning"]["config"]["pruner"] == "lamp"
    # Zeroed weights come on top of the removed channels, and CR counts both against the dense model.
    assert rep["nonzero_params_after"] < rep["params_after"] < rep["params_before"]
    assert rep["compression_rate"] > rep["restructure_compression_rate"]
    assert rep["compression_rate"] == pytest.approx(1 - rep["nonzero_params_after"] / rep["params_before"], abs=1e-3)
    assert (out / "accuracy_vs_cr.png").is_file()
    _, meta = load_checkpoint(out)
    assert meta.info["dense_params"] == rep["params_before"]
