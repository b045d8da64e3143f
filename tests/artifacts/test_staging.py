"""Artifact folders: all-or-nothing writes, reruns that remove only our own unchanged files, one run at a time."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from edgeslice.artifacts.manifest import write_manifest
from edgeslice.artifacts.staging import STAGING_MARK, claim_output, staging_dir
from edgeslice.errors import OutputError


def _write(stage, names):
    for n in names:
        (stage / n).write_text(n)
    write_manifest(stage, {}, 0)


def test_rerun_removes_previous_artifacts_but_keeps_user_files(tmp_path):
    out = tmp_path / "out"
    with staging_dir(out) as stage:
        _write(stage, ["model.onnx", "model.int8.onnx", "report.json"])
    (out / "notes.txt").write_text("mine")
    with staging_dir(out) as stage:
        _write(stage, ["model.onnx", "report.json"])
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "notes.txt", "report.json"]


def test_rerun_keeps_an_artifact_the_user_changed(tmp_path, capfd):
    out = tmp_path / "out"
    with staging_dir(out) as stage:
        _write(stage, ["model.onnx", "model.int8.onnx"])
    (out / "model.int8.onnx").write_text("edited by the user")
    with staging_dir(out) as stage:
        _write(stage, ["model.onnx"])
    assert (out / "model.int8.onnx").read_text() == "edited by the user"
    assert "model.int8.onnx" in capfd.readouterr().err


def test_rerun_refuses_to_overwrite_a_changed_artifact(tmp_path):
    out = tmp_path / "out"
    with staging_dir(out) as stage:
        _write(stage, ["model.onnx"])
    (out / "model.onnx").write_text("edited by the user")
    with pytest.raises(OutputError, match="model.onnx was not written by edgeslice"), staging_dir(out) as stage:
        _write(stage, ["model.onnx"])
    assert (out / "model.onnx").read_text() == "edited by the user"
    with pytest.raises(OutputError, match="model.onnx"), claim_output(out):  # and before any work, too
        pass


def test_a_users_file_under_an_artifact_name_is_refused_before_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # not an edgeslice manifest: the user's own file
    with pytest.raises(OutputError, match="manifest.json"), claim_output(out):
        pass
    assert (out / "manifest.json").read_text() == "{}"


def test_out_naming_a_file_is_refused(tmp_path):
    out = tmp_path / "out"
    out.write_text("not a folder")
    with pytest.raises(OutputError, match="not a folder"), claim_output(out):
        pass
    assert out.read_text() == "not a folder"


def test_failure_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    with staging_dir(out) as stage:
        _write(stage, ["model.onnx"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError), staging_dir(out) as stage:
        _write(stage, ["other.onnx"])
        raise RuntimeError("boom")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no scratch folder, no lock file


def test_a_failed_first_run_leaves_no_folder(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError), claim_output(out):
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_second_run_into_the_same_folder_fails_at_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)  # another run's lock (flock is per open file, not per process)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputError, match="another edgeslice run"), claim_output(out):
            pass
    finally:
        os.close(fd)
    with claim_output(out):  # free again
        pass


def test_stale_staging_of_a_killed_run_is_removed(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import time
        from edgeslice.artifacts.staging import staging_dir
        with staging_dir({str(out)!r}) as stage:
            (stage / "model.onnx").write_text("half")
            print("staged", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "staged"
        with pytest.raises(OutputError, match="another edgeslice run"), claim_output(out):
            pass  # while it runs, the folder is its own
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".out.staging.")]
    assert stale and (stale[0] / STAGING_MARK).is_file()
    foreign = tmp_path / ".out.staging.users"  # same pattern, not made by edgeslice: left alone
    foreign.mkdir()
    deadline = time.time() + 10
    while True:  # the kernel drops a dead process's flock at once; allow for a slow reaper anyway
        try:
            with staging_dir(out) as stage:
                _write(stage, ["model.onnx"])
            break
        except OutputError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.staging.users", "out"]
    assert (out / "model.onnx").read_text() == "model.onnx"


def test_train_and_slice_rerun_into_their_own_out(tmp_path):
    """``train`` and ``slice`` list what they write in a manifest (``staging_dir(config=, seed=)``), so running them
    again with the same ``--out`` replaces their own files (it was refused as "not written by edgeslice"), while a
    file changed by hand since is still refused."""
    from typer.testing import CliRunner

    from edgeslice.cli import app

    runner = CliRunner()
    ck, sl = tmp_path / "ck", tmp_path / "sl"
    train = ["train", "mlp", "--data", "digits", "--epochs", "0.1", "--out", str(ck), "--quiet", "--json"]
    slice_ = ["slice", "mlp", "--checkpoint", str(ck / "model.safetensors"), "--data", "digits", "--out", str(sl),
              "--quiet", "--json"]  # fmt: skip
    for _ in range(2):
        for cmd in (train, slice_):
            r = runner.invoke(app, cmd)
            assert r.exit_code == 0, r.output
    assert {"manifest.json", "model.safetensors", "model.json"} <= {p.name for p in ck.iterdir()}
    (ck / "model.json").write_text((ck / "model.json").read_text() + " ")
    r = runner.invoke(app, train)
    assert r.exit_code != 0 and "not written by edgeslice" in r.output


def test_staging_dir_writes_the_manifest_unless_the_body_did(tmp_path):
    from edgeslice.artifacts.manifest import read_manifest

    with staging_dir(tmp_path / "a", config={"k": 1}, seed=3) as stage:
        (stage / "x.bin").write_bytes(b"x")
    doc = read_manifest(tmp_path / "a")
    assert set(doc["files"]) == {"x.bin"} and doc["config"] == {"k": 1} and doc["seed"] == 3
    with staging_dir(tmp_path / "b", config={"k": 1}, seed=3) as stage:
        (stage / "x.bin").write_bytes(b"x")
        write_manifest(stage, {"own": True}, 7)
    assert read_manifest(tmp_path / "b")["config"] == {"own": True}
    with staging_dir(tmp_path / "c") as stage:
        (stage / "x.bin").write_bytes(b"x")
    assert not (tmp_path / "c" / "manifest.json").exists()
