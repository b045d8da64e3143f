"""CUDA checks (``pytest -m gpu``): the same pipeline on a GPU, deselected by default and on machines without one."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from edgeslice.cli import app

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
MODEL = "mobilenetv3_small_050"


def test_train_slice_compress_on_cuda(tmp_path):
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
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
            str(tmp_path / "ck"),
            "--device-type",
            "cuda",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["test_accuracy"] > 50.0
    args = [
        "slice",
        MODEL,
        "--checkpoint",
        str(tmp_path / "ck"),
        "--data",
        "digits",
        "--calib-per-class",
        "10",
        "--theta",
        "0.9",
        "--json",
    ]
    gpu = runner.invoke(app, [*args, "--device-type", "cuda", "--out", str(tmp_path / "sg")])
    cpu = runner.invoke(app, [*args, "--device-type", "cpu", "--out", str(tmp_path / "sc")])
    assert gpu.exit_code == 0 and cpu.exit_code == 0, gpu.output + cpu.output
    # Different kernels, same decisions: the critical sets agree on (almost) every channel.
    g, c = json.loads(gpu.stdout), json.loads(cpu.stdout)
    assert abs(g["critical_channels"] - c["critical_channels"]) <= 0.01 * c["total_channels"]
    r = runner.invoke(
        app,
        [
            "compress",
            MODEL,
            "--checkpoint",
            str(tmp_path / "ck"),
            "--data",
            "digits",
            "--theta",
            "0.9",
            "--calib-per-class",
            "10",
            "--out",
            str(tmp_path / "out"),
            "--device-type",
            "cuda",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["device"].startswith("cuda")
    assert rep["onnx_parity_max_abs"] <= 1e-4
    assert rep["params_after"] < rep["params_before"]
