"""Atomic update: ``add-class`` killed (SIGKILL) at each stage of the commit leaves the old bundle or the new one,
whole; the next command cleans up what the dead process left beside it.

The process is paused deterministically at a stage by ``EDGESLICE_DEVICE_TEST_PAUSE`` (it announces the stage on
stderr, then sleeps), and killed there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
from edgeslice_device.cli import main
from edgeslice_device.predict import predict

from .conftest import TORCH_FREE_MAIN, device_env, run_device, tree_digest


@pytest.fixture(scope="module")
def grown_reference(base_bundle, class_dirs, tmp_path_factory):
    """The bytes of the bundle after a completed add-class of digit 5 (add-class is deterministic)."""
    folder = tmp_path_factory.mktemp("reference") / "bundle"
    shutil.copytree(base_bundle, folder)
    proc = run_device("add-class", folder, class_dirs["5"], "--name", "5")
    assert proc.returncode == 0, proc.stderr
    return tree_digest(folder)


def _kill_at(stage: str, bundle, images, **env: str) -> None:
    cmd = [sys.executable, "-c", TORCH_FREE_MAIN, "add-class", str(bundle), str(images), "--name", "5"]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env=device_env(EDGESLICE_DEVICE_TEST_PAUSE=stage, **env)
    )
    try:
        line = proc.stderr.readline()
        assert line.strip() == f"EDGESLICE_DEVICE_PAUSED {stage}", line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()


@pytest.mark.parametrize(
    ("stage", "env", "expect"),
    [
        ("staging-partial", {}, "old"),
        ("staged", {}, "old"),
        ("swapped", {}, "new"),
        ("cleanup", {}, "new"),
        ("moved-aside", {"EDGESLICE_DEVICE_NO_EXCHANGE": "1"}, "old"),
        ("cleanup", {"EDGESLICE_DEVICE_NO_EXCHANGE": "1"}, "new"),
    ],
)
def test_killed_add_class_leaves_a_whole_bundle(bundle, class_dirs, test_pngs, grown_reference, stage, env, expect):
    old = tree_digest(bundle)
    _kill_at(stage, bundle, class_dirs["5"], **env)
    assert len(os.listdir(bundle.parent)) > 1  # the dead process left a staging or moved-aside folder
    assert bundle.exists() == (stage != "moved-aside")
    assert main(["verify", str(bundle)]) == 0  # recovers first (restores a moved-aside bundle), then checks
    assert tree_digest(bundle) == (old if expect == "old" else grown_reference)
    assert os.listdir(bundle.parent) == ["bundle"]  # staging and old folders (and their markers) are gone
    preds = predict(bundle, test_pngs["5"][:2])
    assert len(preds) == 2 and all(p.class_name in (list("01234") + ["5"] * (expect == "new")) for p in preds)
