"""``edgeslice evaluate-slices`` end to end on digits with a small timm model."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from edgeslice.cli import app

MODEL = "mobilenetv3_small_050"
runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits):
    import timm

    from edgeslice.models import save_checkpoint
    from edgeslice.pipeline import meta_for

    torch.manual_seed(0)
    model = timm.create_model(MODEL, in_chans=1, num_classes=10).eval()
    path = tmp_path_factory.mktemp("ck") / "model.safetensors"
    save_checkpoint(model, meta_for(MODEL, digits), path)
    return path


def test_evaluate_slices_writes_everything(checkpoint, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate-slices", MODEL, "--checkpoint", str(checkpoint), "--data", "digits", "--metric", "avg"]
    args += ["--strategy", "semantic", "--strategy", "global", "--strategy", "magnitude", "--thetas", "0.9,0.99"]
    args += ["--ratios", "0.5,1.0", "--calib-per-class", "3", "--test-limit", "40", "--bands", "1"]
    args += ["--out", str(out), "--device-type", "cpu", "--json"]
    r = runner.invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # one JSON document, nothing else
    assert doc["files"] == ["masking.csv", "rq1.csv", "rq1.json", "rq1.png"]
    assert (out / "rq1.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((out / "rq1.csv").open()))
    assert [(r["strategy"], r["value"]) for r in rows] == [
        ("semantic", "0.9"),
        ("semantic", "0.99"),
        ("global", "0.5"),
        ("global", "1"),
        ("magnitude", "0.9"),
        ("magnitude", "0.99"),
    ]
    assert rows[3]["compression_rate"] == "0" and float(rows[2]["compression_rate"]) > 0
    assert rows[4]["critical_channels"] == rows[0]["critical_channels"]  # magnitude at semantic's budget
    report = json.loads((out / "rq1.json").read_text())
    assert report["test_samples"] == 40 and report["calibration_samples"] == 30
    assert report["deeparc"]["threshold"] == 0.99 and "accuracy" in report["deeparc"]
    assert "avg" in doc["auc"] and set(doc["auc"]["avg"]["auc"]) == {"semantic", "global", "magnitude"}
    masking = list(csv.DictReader((out / "masking.csv").open()))
    assert [(m["scope"], m["band"]) for m in masking] == [("global", "0-10%"), ("category", "0-10%")]


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--thetas", "0.9,1.5"], 2, "(0, 1]"),
        (["--thetas", "a:b"], 2, "start:stop:step"),
        (["--metric", "shap"], 2, "shap"),
        (["--data", "/no/such/folder"], 1, "not found"),
    ],
)
def test_bad_input(checkpoint, tmp_path, extra, code, message):
    out = tmp_path / "eval"
    r = runner.invoke(
        app, ["evaluate-slices", MODEL, "--checkpoint", str(checkpoint), "--data", "digits", "--out", str(out), *extra]
    )
    assert r.exit_code == code
    assert message in r.stderr and "Traceback" not in r.stderr
    if code == 1:
        assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_wrong_model_is_one_line(checkpoint, tmp_path):
    r = runner.invoke(app, ["evaluate-slices", "resnet18", "--checkpoint", str(checkpoint), "--data", "digits"])
    assert r.exit_code == 1 and "not 'resnet18'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
