"""Every refusal: one line ``error: ...`` on stderr, exit 1, and the bundle byte-identical (nothing left beside it)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess

import pytest
from edgeslice_device._files import canonical_json, sha256_file
from edgeslice_device.cli import main
from PIL import Image

from .conftest import tree_digest


def _refused(capsys, bundle, args, match):
    before = tree_digest(bundle)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
    assert tree_digest(bundle) == before
    assert sorted(os.listdir(bundle.parent)) == sorted(p for p in os.listdir(bundle.parent) if "edgeslice-" not in p)


def _rebind(bundle, name):
    """Record ``name``'s current hash in bundle.json (a bundle assembled from mismatched parts, not tampered)."""
    doc = json.loads((bundle / "bundle.json").read_text())
    doc["files"][name] = sha256_file(bundle / name)
    (bundle / "bundle.json").write_bytes(canonical_json(doc))


def _images(folder, n, mode="L"):
    folder.mkdir()
    for i in range(n):
        Image.new(mode, (16, 16), 40 * i % 255).save(folder / f"{i}.png")
    return folder


def test_index_from_another_model(bundle, class_dirs, capsys):
    doc = json.loads(gzip.decompress((bundle / "critical_index").read_bytes()))
    doc["model_fingerprint"] = "0" * 64
    (bundle / "critical_index").write_bytes(gzip.compress(canonical_json(doc)))
    _rebind(bundle, "critical_index")
    _refused(capsys, bundle, ["add-class", str(bundle), str(class_dirs["5"]), "--name", "5"], "another model")


def test_checkpoint_from_another_model(bundle, base_bundle, class_dirs, capsys):
    meta = json.loads((bundle / "model.json").read_text())
    meta["fingerprint"] = "1" * 64
    (bundle / "model.json").write_bytes(canonical_json(meta))
    _rebind(bundle, "model.json")
    _refused(capsys, bundle, ["add-class", str(bundle), str(class_dirs["5"]), "--name", "5"], "fingerprints differ")


@pytest.mark.parametrize("name", ["critical_index", "model.onnx"])
def test_tampered_file(bundle, class_dirs, capsys, name):
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / name).write_bytes(bytes(data))
    _refused(capsys, bundle, ["add-class", str(bundle), str(class_dirs["5"]), "--name", "5"], f"{name} was changed")
    _refused(capsys, bundle, ["verify", str(bundle)], f"{name} was changed")


def test_duplicate_name(bundle, class_dirs, capsys):
    _refused(capsys, bundle, ["add-class", str(bundle), str(class_dirs["5"]), "--name", "3"], "already in the bundle")


def test_corrupt_image(bundle, class_dirs, tmp_path, capsys):
    folder = shutil.copytree(class_dirs["5"], tmp_path / "imgs")
    (folder / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    _refused(capsys, bundle, ["add-class", str(bundle), str(folder), "--name", "5"], "zz-broken.png")


def test_wrong_channel_image(bundle, class_dirs, tmp_path, capsys):
    folder = shutil.copytree(class_dirs["5"], tmp_path / "imgs")
    Image.new("RGB", (16, 16), (200, 10, 10)).save(folder / "photo.jpg")
    _refused(capsys, bundle, ["add-class", str(bundle), str(folder), "--name", "5"], "is colour (RGB)")


def test_empty_folder_and_too_few_images(bundle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _refused(capsys, bundle, ["add-class", str(bundle), str(tmp_path / "empty"), "--name", "5"], "has no images")
    few = _images(tmp_path / "few", 3)
    _refused(capsys, bundle, ["add-class", str(bundle), str(few), "--name", "5"], "at least 5")
    _refused(capsys, bundle, ["add-class", str(bundle), str(few), "--name", "5", "--min-images", "4"], "at least 4")


def _chattr(flag, path):
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("which", ["bundle", "parent"])
def test_read_only_bundle_or_parent(bundle, class_dirs, capsys, which):
    """Tests run as root, for whom chmod does not make a folder read-only: the immutable attribute does."""
    target = bundle if which == "bundle" else bundle.parent
    if os.geteuid() == 0:
        if not _chattr("+i", target):
            pytest.skip("chattr +i is not available here (root ignores chmod)")
        undo = lambda: _chattr("-i", target)  # noqa: E731
    else:
        mode = target.stat().st_mode
        target.chmod(0o555)
        undo = lambda: target.chmod(mode)  # noqa: E731
    try:
        _refused(capsys, bundle, ["add-class", str(bundle), str(class_dirs["5"]), "--name", "5"], "read-only")
    finally:
        undo()


def test_usage_error_exits_2(bundle, capsys):
    with pytest.raises(SystemExit) as e:
        main(["add-class", str(bundle)])
    assert e.value.code == 2
