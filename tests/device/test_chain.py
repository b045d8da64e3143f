"""The chain, as a user runs it: ``edgeslice compress`` ships a bundle, the device grows it one class at a time —
torch-free (``edgeslice-device add-class``, in a subprocess where torch cannot be imported) and with torch
(``edgeslice increment BUNDLE``) — and the grown bundle still verifies, predicts and grows again.

One small compress per family (digits 0-4, 32 px, a short baseline), shared by the tests of this module."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeslice.cli import app

from .conftest import run_device

runner = CliRunner()
#: Every test grows these two compressed families; the families below them are grown on both paths too, but the
#: learning test and the refusals (which do not depend on the family) run on these two only, to keep CI short.
CORE = ["mobilenetv3_small_050", "resnet10t"]
FAMILIES = [*CORE, "mobilenetv2_050", "efficientnet_b0"]


def _cli(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module", params=FAMILIES)
def shipped(request, tmp_path_factory, learning_seed) -> Path:
    """What ``compress`` ships for a model trained on digits 0-4."""
    root = tmp_path_factory.mktemp(request.param)
    common = [
        "--data",
        "digits",
        "--classes",
        "0,1,2,3,4",
        "--device-type",
        "cpu",
        "--json",
        "--seed",
        str(learning_seed),
    ]
    epochs = "4" if request.param in CORE else "1"  # the other families' tests assert no accuracy
    r = _cli("train", request.param, "--epochs", epochs, "--batch-size", "64", "--lr", "0.01", "--out", root / "ck",
             *common)  # fmt: skip
    assert r.exit_code == 0, r.output
    out = root / "shipped"
    r = _cli("compress", request.param, "--checkpoint", root / "ck" / "model.safetensors", "--theta", "0.95",
             "--calib-per-class", "10", "--finetune-epochs", "0.5", "--no-dense-control", "--out", out,
             *common)  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def _predict(bundle: Path, files: list[Path]) -> list[str]:
    r = run_device("predict", bundle, *files, "--json")
    assert r.returncode == 0, r.stderr
    return [e["class"] for e in json.loads(r.stdout)]


def _accuracy(bundle: Path, pngs: dict[str, list[Path]], names: dict[str, str]) -> dict[str, float]:
    """Per digit: share of its test PNGs predicted as its class name in the bundle."""
    return {d: sum(p == names[d] for p in _predict(bundle, pngs[d])) / len(pngs[d]) for d in names}


def test_bundle_binds_the_compact_model(shipped):
    """The index compress ships is the compact model's own (the first failure of the issue), and the bundle verifies
    torch-free."""
    from edgeslice.index import CriticalIndex
    from edgeslice.models import load_checkpoint

    model, meta = load_checkpoint(shipped)
    index = CriticalIndex.load(shipped / "critical_index")
    assert index.model_fingerprint == meta.fingerprint and meta.restructured
    bundle = json.loads((shipped / "bundle.json").read_text())
    assert bundle["fingerprint"] == meta.fingerprint and bundle["classes"] == meta.classes
    assert bundle["feature_dim"] == model.get_classifier().in_features
    r = run_device("verify", shipped)
    assert r.returncode == 0, r.stderr


@pytest.mark.learning
@pytest.mark.parametrize("shipped", CORE, indirect=True)
def test_device_grows_what_compress_shipped_one_class_at_a_time(shipped, tmp_path, class_dirs, test_pngs, measure):
    """Two single-class ``add-class`` steps without torch: each new digit is predicted far above chance (1/7), old
    digits stay close to what the shipped model scored on the same PNGs.

    Measured (this machine, default kernels; mobilenetv3_small_050 / resnet10t): see the assertion bounds' comment.
    """
    bundle = Path(shutil.copytree(shipped, tmp_path / "b"))
    old = {str(d): str(d) for d in range(5)}
    before = _accuracy(bundle, test_pngs, old)
    for digit in ("5", "6"):
        r = run_device("add-class", bundle, class_dirs[digit], "--name", f"d{digit}")
        assert r.returncode == 0, r.stderr
    assert run_device("verify", bundle).returncode == 0
    after = _accuracy(bundle, test_pngs, {**old, "5": "d5", "6": "d6"})
    print("CHAIN device", bundle, before, after)
    new = (after["5"] + after["6"]) / 2
    old_before = sum(before.values()) / 5
    old_after = sum(after[d] for d in old) / 5
    assert measure("new digits accuracy", new, "> 0.5") > 0.5  # chance is 1/7 over seven classes
    assert measure("old digits: after - before", old_after - old_before, "> -0.25") > -0.25


def test_host_grows_the_shipped_bundle_one_class_at_a_time(shipped, tmp_path):
    """``edgeslice increment BUNDLE`` with one class folder of 6 images, twice; the output is a bundle again (it
    verifies torch-free, its model has one output per class)."""
    from edgeslice.data import load_data

    data = load_data("digits", image_size=32)
    src = shipped
    for step, digit in enumerate((7, 8)):
        new = tmp_path / f"new{digit}" / "train" / f"d{digit}"
        new.mkdir(parents=True)
        _write_pngs(data.train, digit, new, 6)
        out = tmp_path / f"grown{step}"
        r = _cli("increment", src, "--new-data", new.parents[1], "--out", out, "--epochs", "1", "--device-type", "cpu",
                 "--json")  # fmt: skip
        assert r.exit_code == 0, r.output
        report = json.loads(r.stdout)
        assert report["bundle"] is not None and report["bundle"]["classes"] == 6 + step
        assert run_device("verify", out).returncode == 0
        assert len(_predict(out, sorted(new.glob("*.png"))[:2])) == 2
        src = out


def test_device_then_host_then_device(shipped, tmp_path, class_dirs):
    """A bundle grown on a device (whose index lost the host's statistics) is grown again on the host — from the
    bundle's exact statistics, with the discriminant head, into a bundle — and then again on the device."""
    bundle = Path(shutil.copytree(shipped, tmp_path / "b"))
    r = run_device("add-class", bundle, class_dirs["5"], "--name", "d5")
    assert r.returncode == 0, r.stderr
    new = tmp_path / "new" / "d7"
    shutil.copytree(class_dirs["7"], new)
    out = tmp_path / "host"
    r = _cli("increment", bundle, "--new-data", new.parent, "--out", out, "--device-type", "cpu", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["head"] == "lda" and report["bundle"]["classes"] == 7
    r = run_device("add-class", out, class_dirs["6"], "--name", "d6")
    assert r.returncode == 0, r.stderr
    assert run_device("verify", out).returncode == 0
    info = json.loads(run_device("info", out, "--json").stdout)
    assert info["classes"] == ["0", "1", "2", "3", "4", "d5", "d7", "d6"]


@pytest.mark.parametrize("shipped", CORE[:1], indirect=True)
def test_increment_refuses_bad_new_data_before_any_work(shipped, tmp_path):
    """A class already present, and fewer than 5 images: one line, exit 1, nothing written, bundle unchanged."""
    from edgeslice.data import load_data

    data = load_data("digits", image_size=32)
    before = _digests(shipped)
    few = tmp_path / "few" / "train" / "d9"
    few.mkdir(parents=True)
    _write_pngs(data.train, 9, few, 4)
    dup = tmp_path / "dup" / "train" / "0"
    dup.mkdir(parents=True)
    _write_pngs(data.train, 0, dup, 6)
    for folder, message in ((few.parents[1], "fewer than 5 images"), (dup.parents[1], "already has class")):
        out = tmp_path / f"out-{folder.name}"
        r = _cli("increment", shipped, "--new-data", folder, "--out", out, "--classes", folder.name == "dup" and "0"
                 or "d9", "--device-type", "cpu")  # fmt: skip
        assert r.exit_code == 1, r.output
        assert message in r.output and "Traceback" not in r.output
        assert not out.exists()
    assert _digests(shipped) == before


def _write_pngs(dataset, label: int, folder: Path, n: int) -> None:
    from PIL import Image

    from edgeslice.data import targets_of

    idx = (targets_of(dataset) == label).nonzero().flatten()[:n]
    for i in idx.tolist():
        x, _ = dataset[i]
        Image.fromarray((x[0] * 255).round().clamp(0, 255).byte().numpy()).save(folder / f"{i}.png")
