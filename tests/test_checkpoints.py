"""Models in as users have them: plain state dicts, timm train.py checkpoints, pretrained weights."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgeslice.cli import app
from edgeslice.errors import ModelError
from edgeslice.models import create_model, load_checkpoint, read_state_dict

MODEL = "mobilenetv3_small_050"
runner = CliRunner()


def _timm_model(num_classes: int = 10, in_chans: int = 1, seed: int = 0) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(MODEL, num_classes=num_classes, in_chans=in_chans).eval()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A folder with one model's state dict in every supported layout (and an EMA copy that differs)."""
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("weights")
    sd = _timm_model().state_dict()
    ema = {k: (v + 1 if v.is_floating_point() else v) for k, v in sd.items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, d / "plain.safetensors")
    for suffix in ("pth", "pt", "bin"):
        torch.save(sd, d / f"plain.{suffix}")
    torch.save({f"module.{k}": v for k, v in sd.items()}, d / "ddp.pth")
    # The layout of timm's train.py CheckpointSaver, argparse.Namespace included.
    train_py = {
        "epoch": 3,
        "arch": MODEL,
        "state_dict": sd,
        "state_dict_ema": ema,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "version": 2,
        "args": argparse.Namespace(model=MODEL, lr=0.1, epochs=3, model_ema=True),
        "metric": 91.5,
    }
    torch.save(train_py, d / "checkpoint-3.pth.tar")
    return d, sd, ema


@pytest.mark.parametrize("name", ["plain.safetensors", "plain.pth", "plain.pt", "plain.bin", "ddp.pth"])
def test_plain_state_dict_formats(weights, name):
    d, sd, _ = weights
    model, meta = load_checkpoint(d / name, expect_model=MODEL)
    assert _same(model.state_dict(), sd)
    # classes and channels from the tensors; normalisation and size from timm's pretrained cfg (1 channel: mean).
    assert (meta.num_classes, meta.in_chans, meta.input_size) == (10, 1, 224)
    assert meta.mean == pytest.approx([(0.485 + 0.456 + 0.406) / 3])
    assert meta.info["plain_state_dict"] and len(meta.info["weights"]["sha256"]) == 64


def test_timm_train_py_checkpoint_and_ema(weights):
    d, sd, ema = weights
    model, _ = load_checkpoint(d / "checkpoint-3.pth.tar", expect_model=MODEL)
    assert _same(model.state_dict(), sd)
    model, meta = load_checkpoint(d / "checkpoint-3.pth.tar", expect_model=MODEL, use_ema=True)
    assert _same(model.state_dict(), ema) and meta.info["weights"]["ema"]
    with pytest.raises(ModelError, match="state_dict_ema"):
        read_state_dict(d / "plain.pth", use_ema=True)


def test_overrides_and_mismatches(weights, tmp_path):
    d, sd, _ = weights
    _, meta = load_checkpoint(d / "plain.pth", expect_model=MODEL, image_size=64, mean=[0.5], std=[0.25])
    assert (meta.input_size, meta.mean, meta.std) == (64, [0.5], [0.25])
    with pytest.raises(ModelError, match="does not fit"):
        load_checkpoint(d / "plain.pth", expect_model="mobilenetv3_small_100")
    torch.save([1, 2], tmp_path / "notes.pth")
    with pytest.raises(ModelError, match="not a state dict"):
        read_state_dict(tmp_path / "notes.pth")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelError, match="unknown weights format"):
        read_state_dict(tmp_path / "model.onnx")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": torch.zeros(1), "payload": _RunsCode(marker)}, evil)
    with pytest.raises(ModelError, match="needs code to unpickle") as err:
        load_checkpoint(evil, expect_model=MODEL)
    assert "posix.system" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    r = runner.invoke(app, ["compress", MODEL, "--checkpoint", str(evil), "--data", "digits"])
    assert r.exit_code == 1 and "needs code to unpickle" in r.output and "Traceback" not in r.output
    assert not marker.exists()


def test_compress_refuses_class_count_mismatch(tmp_path):
    torch.save(_timm_model(num_classes=7).state_dict(), tmp_path / "seven.pth")
    r = runner.invoke(
        app, ["compress", MODEL, "--checkpoint", str(tmp_path / "seven.pth"), "--data", "digits", "--image-size", "32"]
    )
    assert r.exit_code == 1 and "7 classes" in r.output and "10" in r.output


def test_compress_from_plain_state_dict(tmp_path):
    """A user's .pth goes through compress unchanged: the sidecar is written, with the data's class names."""
    torch.save(_timm_model().state_dict(), tmp_path / "user.pth")
    out = tmp_path / "out"
    args = ["compress", MODEL, "--checkpoint", str(tmp_path / "user.pth"), "--data", "digits", "--image-size", "32"]
    r = runner.invoke(app, [*args, "--calib-per-class", "4", "--finetune-epochs", "0", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["classes"] == [str(i) for i in range(10)] and meta["input_size"] == 32
    assert meta["mean"] == pytest.approx([(0.485 + 0.456 + 0.406) / 3], abs=1e-6)  # the cfg's, not digits' stats
    report = json.loads(r.stdout)
    assert report["dense_control"] is None  # not our baseline: nothing to control for
    assert report["params_after"] < report["params_before"]


def test_pretrained_file_adapts_first_conv_and_resets_head(weights):
    d, _, _ = weights
    rgb = _timm_model(num_classes=10, in_chans=3, seed=1).state_dict()
    torch.save(rgb, d / "rgb.pth")
    torch.manual_seed(5)
    model = create_model(MODEL, num_classes=4, in_chans=1, pretrained_file=d / "rgb.pth")
    own = model.state_dict()
    # timm's adapt_input_conv: RGB → 1 channel sums the kernels over the input channels.
    assert torch.allclose(own["conv_stem.weight"], rgb["conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(own["blocks.2.0.conv_pw.weight"], rgb["blocks.2.0.conv_pw.weight"])
    assert own["classifier.weight"].shape == (4, 1024)
    # Same number of classes as the file: the head is reset all the same.
    model = create_model(MODEL, num_classes=10, in_chans=3, pretrained_file=d / "rgb.pth")
    assert not torch.equal(model.state_dict()["classifier.weight"], rgb["classifier.weight"])
    assert torch.equal(model.state_dict()["conv_head.weight"], rgb["conv_head.weight"])


def test_train_pretrained_file_and_cache_key(weights, tmp_path):
    from edgeslice.data import load_data
    from edgeslice.pipeline import cached_baseline

    d, _, _ = weights
    bundle = load_data("digits", seed=0)
    cpu = torch.device("cpu")
    _, meta, path, _ = cached_baseline(MODEL, bundle, epochs=0.02, seed=0, device=cpu, batch_size=64)
    _, meta_pt, path_pt, _ = cached_baseline(
        MODEL, bundle, epochs=0.02, seed=0, device=cpu, batch_size=64, pretrained_file=str(d / "plain.pth")
    )
    assert path != path_pt and "file-" in path_pt.parent.name
    assert meta_pt.info["weights"].startswith("file:") and "weights" not in meta.info
    r = runner.invoke(
        app,
        ["train", MODEL, "--data", "digits", "--epochs", "0.02", "--pretrained-file", str(d / "checkpoint-3.pth.tar"),
         "--use-ema", "--out", str(tmp_path / "t"), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "t" / "model.json").read_text())["info"]
    assert info["weights"].startswith("file:")


def test_pretrained_offline_names_pretrained_file(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EDGESLICE_HOME": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "edgeslice", "train", MODEL, "--data", "digits", "--pretrained", "--epochs", "0.01",
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 1
    assert "--pretrained-file" in r.stderr and "Traceback" not in r.stderr
