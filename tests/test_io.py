"""Artifact folders: all-or-nothing writes, and reruns that leave no stale artifact behind."""

from __future__ import annotations

import json

import pytest

from edgeslice._io import staging_dir


def _write(stage, names):
    for n in names:
        (stage / n).write_text(n)
    (stage / "manifest.json").write_text(json.dumps({"files": {n: {"sha256": "0"} for n in names if n != "report.json"},
                                                     "volatile": {"report.json": {}}}))  # fmt: skip


def test_rerun_removes_previous_artifacts_but_keeps_user_files(tmp_path):
    out = tmp_path / "out"
    with staging_dir(out) as stage:
        _write(stage, ["model.onnx", "model.int8.onnx", "report.json"])
    (out / "notes.txt").write_text("mine")
    with staging_dir(out) as stage:
        _write(stage, ["model.onnx", "report.json"])
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "notes.txt", "report.json"]


def test_failure_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    with staging_dir(out) as stage:
        _write(stage, ["model.onnx"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError), staging_dir(out) as stage:
        _write(stage, ["other.onnx"])
        raise RuntimeError("boom")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no scratch folder left
