"""``edgeslice prune`` end to end on scikit-learn digits: artifacts, ONNX parity, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import edgeslice.train
from edgeslice.artifacts.files import sha256_file
from edgeslice.cli import app
from edgeslice.models import count_parameters, load_checkpoint, save_checkpoint
from edgeslice.pruning import ARTIFACTS, prunable_weights, state_dir_for

runner = CliRunner()


def _run(*args: str):
    # One intra-op thread: on a shared 2-core machine two OpenMP threads per process can be ~50x slower.
    torch.set_num_threads(1)
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def mlp_ck(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mlp")
    args = "train mlp --data digits --image-size 28 --epochs 1 --batch-size 64 --lr 3e-3 --device-type cpu --json"
    r = _run(*args.split(), "--out", str(out))
    assert r.exit_code == 0, r.output
    return out / "model.safetensors"


@pytest.fixture(scope="module")
def mnv3_ck(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mnv3")
    args = "train mobilenetv3_small_050 --data digits --epochs 1 --batch-size 64 --device-type cpu --json".split()
    r = _run(*args, "--out", str(out))
    assert r.exit_code == 0, r.output
    return out / "model.safetensors"


def _prune(ck: Path, out: Path, options: str = "", *, model: str = "mlp"):
    common = "--data digits --device-type cpu --batch-size 64".split()
    return _run("prune", model, "--checkpoint", str(ck), "--out", str(out), *common, *options.split())


def _onnx_max_diff(folder: Path, x: torch.Tensor) -> float:
    import onnxruntime as ort

    model, _ = load_checkpoint(folder)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    return float(abs(sess.run(None, {"input": x.numpy()})[0] - ref).max())


def test_prune_conv_model_artifacts_and_onnx_parity(mnv3_ck, tmp_path):
    out = tmp_path / "out"
    options = "--pruner uniform+ --prune-step 0.5 --max-iterations 1 --max-acc-drop 100 --finetune-steps 2 --json"
    r = _prune(mnv3_ck, out, options, model="mobilenetv3_small_050")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # one JSON document and nothing else
    assert {p.name for p in out.iterdir()} == set(ARTIFACTS)
    assert not state_dir_for(out).exists()
    assert doc["iterations"] == 1 and doc["history"][0]["prunable_sparsity"] == pytest.approx(0.5, abs=1e-6)
    # Uniform+ keeps the first conv dense.
    model, meta = load_checkpoint(out)
    first = prunable_weights(model)[0][1]
    assert int((first.weight == 0).sum()) == 0
    # BatchNorm is folded into the convs: zeros stay zeros, so ONNX holds exactly the non-zero PyTorch weights.
    assert doc["onnx"]["nonzero_weights"] == doc["onnx"]["torch_nonzero_prunable_weights"]
    assert doc["onnx"]["parity_max_abs"] <= 1e-4
    assert _onnx_max_diff(out, torch.rand(4, 1, 32, 32)) < 1e-4
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert sha256_file(out / name) == entry["sha256"]
    assert manifest["config"]["pruning"]["pruner"] == "uniform+"


def test_prune_restructured_checkpoint_reports_cr_against_the_dense_model(mlp_ck, tmp_path):
    from edgeslice.restructure import restructure_
    from edgeslice.slicing import find_layers

    dense_model, meta = load_checkpoint(mlp_ck)
    n_dense = count_parameters(dense_model)
    x = torch.rand(2, 1, 28, 28)
    layers = find_layers(dense_model, x[:1])
    restructure_(dense_model, layers, {la.name: torch.arange(la.channels) % 2 == 0 for la in layers}, x)
    meta.restructured, meta.info = True, {"baseline": str(mlp_ck), "baseline_accuracy": 99.0}
    ck = tmp_path / "restructured"
    save_checkpoint(dense_model, meta, ck / "model.safetensors")
    n_restructured = count_parameters(dense_model)

    out = tmp_path / "out"
    options = "--pruner lamp --max-iterations 2 --finetune-steps 1 --max-acc-drop 100 --json"
    r = _prune(ck / "model.safetensors", out, options)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["dense_params"] == n_dense and doc["params"] == n_restructured
    assert doc["start"]["compression_rate"] == pytest.approx(1 - n_restructured / n_dense)
    assert doc["baseline_accuracy"] == 99.0
    assert any("dense baseline" in n for n in doc["notes"])
    assert doc["compression_rate"] > doc["start"]["compression_rate"]
    assert _onnx_max_diff(out, torch.rand(4, 1, 28, 28)) < 1e-4


def test_prune_human_output(mlp_ck, tmp_path):
    r = _prune(mlp_ck, tmp_path / "o", "--pruner global --max-iterations 1 --finetune-steps 0")
    assert r.exit_code == 0, r.output
    for text in ("CR (vs dense model)", "NI (iterations run)", "MA (test accuracy", "ONNX size / gzip"):
        assert text in r.stdout


def test_interrupted_run_leaves_out_intact_and_resumes(mlp_ck, tmp_path, monkeypatch):
    options = "--pruner erk --prune-step 0.4 --max-iterations 3 --finetune-steps 2 --max-acc-drop 100 --json"
    reference = tmp_path / "reference"
    r = _prune(mlp_ck, reference, options)
    assert r.exit_code == 0, r.output
    expected = json.loads(r.stdout)

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier run's artifacts")
    real_train = edgeslice.train.train_model
    calls = []

    def train_then_interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C while fine-tuning the third iteration
            raise KeyboardInterrupt
        return real_train(*a, **k)

    monkeypatch.setattr(edgeslice.train, "train_model", train_then_interrupt)
    r = _prune(mlp_ck, out, options)
    assert r.exit_code == 130
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert json.loads((state_dir_for(out) / "state.json").read_text())["progress"]["finished"] is False

    monkeypatch.setattr(edgeslice.train, "train_model", real_train)
    r = _prune(mlp_ck, out, options + " --resume")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["resumed_from"] == 2
    assert [h["accuracy"] for h in doc["history"]] == [h["accuracy"] for h in expected["history"]]
    assert doc["compression_rate"] == expected["compression_rate"]
    assert sha256_file(out / "model.safetensors") == sha256_file(reference / "model.safetensors")
    assert not state_dir_for(out).exists()


@pytest.mark.parametrize(
    ("options", "code", "message"),
    [
        ("--pruner magnitude", 2, "magnitude"),
        ("--prune-step 1.0", 2, "(0, 1)"),
        ("--max-iterations 0", 2, "max-iterations"),
    ],
)
def test_usage_errors(mlp_ck, tmp_path, options, code, message):
    out = tmp_path / "out"
    r = _prune(mlp_ck, out, options)
    assert r.exit_code == code
    assert message in r.stderr
    assert not out.exists()


def test_bad_checkpoints(mlp_ck, tmp_path):
    bad = tmp_path / "ck"
    bad.mkdir()
    (bad / "model.json").write_bytes(mlp_ck.with_suffix(".json").read_bytes())
    raw = mlp_ck.read_bytes()
    (bad / "model.safetensors").write_bytes(raw[: len(raw) // 3])
    out = tmp_path / "out"
    r = _prune(bad / "model.safetensors", out)
    assert r.exit_code == 1 and "cannot read checkpoint" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists() and not state_dir_for(out).exists()
    r = _prune(mlp_ck, out, model="resnet18")
    assert r.exit_code == 1 and "not 'resnet18'" in r.stderr
    assert not out.exists()
    r = _run("prune", "mlp", "--checkpoint", str(mlp_ck), "--data", "cifar10", "--out", str(out))
    assert r.exit_code == 1 and not out.exists()
