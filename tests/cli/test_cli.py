"""The command line, end to end on a small real data set (scikit-learn digits) and a small timm model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeslice.artifacts.files import sha256_file
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
    r = _run(
        "train",
        MODEL,
        "--data",
        "digits",
        "--epochs",
        "8",
        "--batch-size",
        "64",
        "--lr",
        "0.01",
        "--out",
        str(out),
        "--device-type",
        "cpu",
        "--json",
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    # Learned something (chance is 10%). Not a `learning` test: 98.3% measured, so the margin is wide on any kernels,
    # and 8 epochs of MobileNetV3 take minutes once oneDNN is held to SSE4.1.
    assert doc["test_accuracy"] > 50.0
    return out


def test_train_writes_checkpoint(trained):
    model, meta = load_checkpoint(trained / "model.safetensors")
    assert meta.timm_name == MODEL and meta.in_chans == 1 and len(meta.classes) == 10
    assert meta.info["data"]["name"] == "digits"


def test_slice_is_deterministic(trained, tmp_path):
    args = [
        "slice",
        MODEL,
        "--checkpoint",
        str(trained / "model.safetensors"),
        "--data",
        "digits",
        "--calib-per-class",
        "10",
        "--theta",
        "0.9",
        "--device-type",
        "cpu",
        "--json",
    ]
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
    r = _run(
        "compress",
        MODEL,
        "--checkpoint",
        str(trained / "model.safetensors"),
        "--data",
        "digits",
        "--theta",
        "0.9",
        "--calib-per-class",
        "10",
        "--finetune-epochs",
        "1",
        "--out",
        str(out),
        "--device-type",
        "cpu",
        "--json",
    )
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # stdout is one JSON document and nothing else
    expected = {
        "model.onnx",
        "model.safetensors",
        "model.json",
        "critical_index",
        "report.json",
        "manifest.json",
        "critical_ratio.png",
        # the device bundle (docs/device.md): compress's output is what a device runs and grows
        "source_index",
        "class_stats.safetensors",
        "preprocess.json",
        "bundle.json",
    }
    assert expected == {p.name for p in out.iterdir()}
    assert report["params_after"] < report["params_before"]
    assert report["onnx_parity_max_abs"] <= 1e-4
    assert report["restructure_equivalence_max_abs"] < 1e-3
    assert report["onnx_after"]["raw_bytes"] < report["onnx_before"]["raw_bytes"]
    for side in ("onnx_before", "onnx_after"):  # latency as the device runs it, and the 224 px reference (32 px < 96)
        device, ref = report[side]["latency_device"], report[side]["latency_reference_224"]
        assert (device["threads"], device["batch"], device["input_shape"]) == (1, 1, [1, 32, 32])
        assert device["median_ms"] > 0 and device["runs"] > 0 and "threads" in report[side]["latency"]
        assert (ref["threads"], ref["batch"], ref["input_shape"]) == (1, 1, [1, 224, 224])
        assert "224 px" in ref["reference"]
        peak = report[side]["peak_activation"]
        assert peak["peak_bytes"] > 0 and peak["budget_estimate_bytes"] > 0 and "shape inference" in peak["method"]
    peaks = [report[side]["peak_activation"]["peak_bytes"] for side in ("onnx_before", "onnx_after")]
    assert peaks[1] <= peaks[0]  # fewer channels never need more activation memory
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert sha256_file(out / name) == entry["sha256"]
    assert set(manifest["files"]) == expected - {"manifest.json", "report.json"}  # report.json: volatile, unhashed
    assert set(manifest["volatile"]) == {"report.json"}
    # The restructured checkpoint loads without pickle and agrees with the ONNX file.
    model, meta = load_checkpoint(out)
    assert meta.restructured and sum(p.numel() for p in model.parameters()) == report["params_after"]
    import onnxruntime as ort

    x = torch.rand(4, 1, 32, 32)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    assert abs(sess.run(None, {"input": x.numpy()})[0] - ref).max() < 1e-4
    # The shipped index is bound to the compact model it ships; the dense model's slice is kept beside it.
    idx = CriticalIndex.load(out / "critical_index")
    assert idx.model_fingerprint == meta.fingerprint
    src = CriticalIndex.load(out / "source_index")
    assert src.model_fingerprint == load_checkpoint(trained)[1].fingerprint != meta.fingerprint


def test_compress_human_output(trained, tmp_path):
    r = _run(
        "compress",
        MODEL,
        "--checkpoint",
        str(trained),
        "--data",
        "digits",
        "--calib-per-class",
        "5",
        "--finetune-epochs",
        "0",
        "--out",
        str(tmp_path / "o"),
        "--device-type",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    assert "compression rate" in r.stdout and "ONNX size" in r.stdout
    # The device figure (1 thread, batch 1, the model's input size) comes before the multi-thread ones.
    device_row = r.stdout.index("onnxruntime, 1 thread, batch 1, 32 px")
    assert device_row < r.stdout.index("224 px, reference") < r.stdout.index("batch 32")
    assert "peak activations" in r.stdout and "RAM budget's estimate" in r.stdout


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
    if code == 1:  # one error line; plain progress lines may come first (stderr is no terminal)
        assert len([ln for ln in r.stderr.strip().splitlines() if not ln.startswith("[edgeslice] ")]) == 1, r.stderr
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
    r = _run(
        "compress",
        "resnet18",
        "--checkpoint",
        str(trained / "model.safetensors"),
        "--data",
        "digits",
        "--out",
        str(out),
    )
    assert r.exit_code == 1 and "not 'resnet18'" in r.stderr


def test_version_and_help():
    r = _run("--version")
    assert r.exit_code == 0 and r.stdout.startswith("edgeslice ")
    r = _run("--help")
    for cmd in ("train", "slice", "compress"):
        assert cmd in r.stdout


def test_compress_with_iterative_pruning(trained, tmp_path):
    out = tmp_path / "out"
    r = _run(
        "compress",
        MODEL,
        "--checkpoint",
        str(trained),
        "--data",
        "digits",
        "--theta",
        "0.9",
        "--calib-per-class",
        "5",
        "--finetune-epochs",
        "0.5",
        "--pruner",
        "lamp",
        "--max-iterations",
        "2",
        "--finetune-steps",
        "3",
        "--max-acc-drop",
        "100",
        "--out",
        str(out),
        "--device-type",
        "cpu",
        "--json",
    )
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


# --- compress --device / --quantize (device profiles and budgets) -------------------------------------------------

TOY_DEVICE = """
flash = "{flash}"
ram = "1 MiB"
latency = "10 ms"
precisions = ["fp32", "int8"]
opset = 17
threads = 2
macs_per_s_source = "made up for a test"

[macs_per_s]
fp32 = "1 GMAC/s"
int8 = "2 GMAC/s"
"""


@pytest.fixture(scope="module")
def trained_mlp(tmp_path_factory, learning_seed) -> Path:
    """The MLP trains in seconds on digits (~95%), so the budget tests stay fast."""
    out = tmp_path_factory.mktemp("mlp")
    r = _run("train", "mlp", "--data", "digits", "--epochs", "5", "--out", str(out), "--device-type", "cpu", "--json",
             "--seed", str(learning_seed))  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def _compress_mlp(ck: Path, out: Path, *extra: str):
    return _run(
        "compress",
        "mlp",
        "--checkpoint",
        str(ck),
        "--data",
        "digits",
        "--calib-per-class",
        "10",
        "--finetune-epochs",
        "0.5",
        "--out",
        str(out),
        "--device-type",
        "cpu",
        *extra,
    )


def test_compress_device_budget_search(trained_mlp, tmp_path):
    from edgeslice.deploy.budget import measure_artifacts
    from edgeslice.deploy.devices import get_device

    device = tmp_path / "toy.toml"
    device.write_text(TOY_DEVICE.format(flash="40 KiB"))  # the dense MLP is 2.6 MB: only a slice fits
    out = tmp_path / "out"
    r = _compress_mlp(trained_mlp, out, "--device", str(device), "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    budget = rep["budget"]
    assert budget["ok"] and all(c["ok"] for c in budget["checks"])
    device_latency = rep["onnx_after"]["latency_device"]  # the profile's threads (capped at this machine's cores)
    assert device_latency.get("threads_requested", device_latency["threads"]) == 2 and device_latency["batch"] == 1
    assert {c["name"] for c in budget["checks"]} >= {"flash", "ram", "latency", "precision"}
    theta, precision = budget["theta"], budget["precision"]
    # The chosen θ is the largest that fits: every larger candidate of that precision failed its flash budget.
    for c in budget["search"]["candidates"]:
        if c["precision"] == precision:
            assert c["ok"] == (c["theta"] <= theta), c
    assert any(c["theta"] > theta and "flash" in c["failing"] for c in budget["search"]["candidates"])
    flash = next(c for c in budget["checks"] if c["name"] == "flash")
    assert flash["value"] <= flash["limit"] == 40 * 1024 and flash["margin"] == flash["limit"] - flash["value"]
    # The effective configuration records what was chosen, so `verify` can re-check the budgets.
    assert rep["config"]["slicing"]["theta"] == theta and rep["config"]["device"] == str(device)
    assert rep["precision"] == precision and rep["config"]["quantize"] == ("int8" if precision == "int8" else "none")
    model_file = "model.int8.onnx" if precision == "int8" else "model.onnx"
    assert (out / model_file).stat().st_size == flash["value"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert model_file in manifest["files"] and manifest["config"]["slicing"]["theta"] == theta
    # Re-measured from the folder alone, the artifacts still meet every budget.
    checks = get_device(device).check(measure_artifacts(out))
    assert all(c.ok for c in checks), [c.describe() for c in checks]
    # Human output: the budget table.
    r = _compress_mlp(trained_mlp, tmp_path / "human", "--device", str(device))
    assert r.exit_code == 0 and "device toy" in r.stdout and "margin" in r.stdout


def test_compress_device_nothing_fits(trained_mlp, tmp_path):
    device = tmp_path / "tiny.toml"
    device.write_text(TOY_DEVICE.format(flash="1 KiB"))
    out = tmp_path / "out"
    r = _compress_mlp(trained_mlp, out, "--device", str(device))
    assert r.exit_code == 1
    assert "no model fits" in r.stderr and "flash" in r.stderr and "θ=0.8" in r.stderr and "over by" in r.stderr
    errors = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("[edgeslice] ")]  # progress aside
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.toml"]  # no staging folder left behind


@pytest.mark.learning
def test_compress_int8_only_device_and_quantize(trained_mlp, tmp_path, measure):
    r = _compress_mlp(trained_mlp, tmp_path / "esp", "--device", "esp32-s3", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["budget"]["precision"] == "int8" and rep["opset"] == 13  # ESP-DL: int8 only, opset 13
    # --quantize int8 without a device: model.int8.onnx beside model.onnx, in the manifest, parity enforced.
    out = tmp_path / "q"
    r = _compress_mlp(trained_mlp, out, "--quantize", "int8", "--theta", "0.95", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    q = rep["int8"]
    assert measure("int8 top-1 agreement", q["parity"]["top1_agreement"], ">= 0.97") >= 0.97 and q["parity"]["ok"]
    drop = abs(q["parity"]["accuracy_int8"] - q["parity"]["accuracy_fp32"])
    assert measure("|int8 - fp32| accuracy points", drop, "<= 3.0") <= 3.0
    assert q["raw_bytes"] < 0.4 * rep["onnx_after"]["raw_bytes"]
    assert q["latency"]["median_ms"] > 0 and q["latency_batch32"]["median_ms"] > 0
    assert (q["latency_device"]["threads"], q["latency_device"]["batch"]) == (1, 1)
    # An MLP's first layer is sized for its input: no 224 px reference, and the report says why.
    assert "does not run at 224 px" in rep["onnx_after"]["latency_reference_224"]["skipped"]
    assert "model.int8.onnx" in json.loads((out / "manifest.json").read_text())["files"]
    assert rep["budget"] is None and rep["precision"] == "int8"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "nope"], "unknown device 'nope'"),
        (["--device", "BAD"], "unknown unit 'furlongs'"),
        (["--device", "jetson-nano", "--quantize", "int8"], "does not support int8"),
        (["--device", "rpi4", "--strategy", "global"], "needs --strategy semantic"),
        (["--quantize", "int4"], "int4"),
    ],
)
def test_compress_device_bad_input(trained_mlp, tmp_path, extra, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(TOY_DEVICE.format(flash="40 furlongs"))
    out = tmp_path / "out"
    r = _compress_mlp(trained_mlp, out, *[str(bad) if a == "BAD" else a for a in extra])
    assert r.exit_code in (1, 2) and message in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    if r.exit_code == 1:
        assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_compress_device_with_pruner(trained_mlp, tmp_path):
    device = tmp_path / "toy.toml"
    device.write_text(TOY_DEVICE.format(flash="40 KiB"))
    r = _compress_mlp(trained_mlp, tmp_path / "out", "--device", str(device), "--pruner", "lamp", "--max-iterations",
                      "2", "--finetune-steps", "3", "--max-acc-drop", "100", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    # The pruner's last kept iteration is shipped; its zeros do not change the dense file, which still fits.
    assert rep["pruning"]["iterations_kept"] == 2 and rep["nonzero_params_after"] < rep["params_after"]
    assert rep["budget"]["ok"] and "last kept iteration" in rep["budget"]["pruning_note"]


@pytest.mark.parametrize("rule", ["cap", "lamp"])
def test_compress_widths(trained, tmp_path, rule):
    """--widths cap/lamp: the θ slice sets the size (not exceeded by cap; within 1% for lamp's bisection, or the
    nearest round_to step), the widths follow the rule, the shipped model still matches the masked original."""
    common = ["--checkpoint", str(trained / "model.safetensors"), "--data", "digits", "--theta", "0.9"]
    common += ["--calib-per-class", "10", "--finetune-epochs", "0", "--device-type", "cpu", "--json"]
    ref = json.loads(_run("compress", MODEL, *common, "--widths", "theta", "--out", str(tmp_path / "theta")).stdout)
    r = _run("compress", MODEL, *common, "--widths", rule, "--out", str(tmp_path / rule))
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["config"]["widths"] == rule
    assert report["restructure_equivalence_max_abs"] < 1e-3 and report["onnx_parity_max_abs"] <= 1e-4
    model, _ = load_checkpoint(tmp_path / rule)
    assert sum(p.numel() for p in model.parameters()) == report["params_after"]
    theta_groups = {g["root"]: g for g in ref["groups"]}
    kept = {g["root"]: g["channels"] - g["removed"] for g in report["groups"]}
    # another allocation than the θ slice's
    assert kept != {g["root"]: g["channels"] - g["removed"] for g in ref["groups"]}
    if rule == "cap":
        assert report["params_after"] <= ref["params_after"]
        cap = max(kept.values())
        assert cap % 8 == 0 and cap < max(g["channels"] for g in ref["groups"])
        for g in report["groups"]:  # every group keeps min(its channels, the cap), unless it cannot shrink at all
            if "kept_whole" not in g:
                assert kept[g["root"]] == min(theta_groups[g["root"]]["channels"], cap), g["root"]
    else:
        assert abs(report["params_after"] / ref["params_after"] - 1) < 0.05


def test_compress_widths_needs_semantic(trained, tmp_path):
    args = ["--checkpoint", str(trained / "model.safetensors"), "--data", "digits", "--strategy", "global"]
    r = _run("compress", MODEL, *args, "--widths", "cap", "--out", str(tmp_path / "o"), "--device-type", "cpu")
    assert r.exit_code != 0 and "--widths cap needs --strategy semantic" in r.output
    assert not (tmp_path / "o").exists()
