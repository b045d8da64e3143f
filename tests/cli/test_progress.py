"""Progress without a terminal (issue 29): plain ``[edgeslice]`` lines on stderr, never stdout; none under --quiet."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeslice import _progress
from edgeslice._progress import progress, set_enabled, stage
from edgeslice.cli import app

#: The cheapest real compress: an MLP baseline trained once into the session's $EDGESLICE_HOME, a short fine-tune.
COMPRESS = [
    "compress", "mlp", "--data", "digits", "--train-epochs", "1", "--calib-per-class", "5", "--finetune-epochs", "0.2",
    "--round-to", "1", "--device-type", "cpu",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _progress_on(monkeypatch):
    """Each test starts with progress on, and the process-wide switch is restored after it."""
    monkeypatch.setattr(_progress, "_enabled", True)


def test_a_loop_prints_a_line_per_tenth_and_one_at_its_end_on_stderr_only(capsys):
    with progress("fine-tune", 50) as advance:
        for i in range(50):
            advance(1, loss=1.0 / (i + 1))
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert all(line.startswith("[edgeslice] fine-tune: ") for line in lines), lines
    steps = [re.search(r": (\d+)% \((\d+)/50\) ", line).groups() for line in lines[:-1]]
    assert steps == [(str(p), str(p // 2)) for p in range(10, 100, 10)]  # 10%, 20%, … 90%: one line each
    assert re.fullmatch(r"\[edgeslice\] fine-tune: done 50/50 in \d+\.\d s loss=0\.02", lines[-1]), lines[-1]


def test_a_loop_of_uneven_or_large_steps_prints_at_most_one_line_per_tenth(capsys):
    with progress("evaluate", 1000) as advance:
        for n in (512, 488):  # two batches: 51% crossed five tenths at once, then the end
            advance(n)
    with progress("train", 3) as advance:
        for _ in range(3):
            advance()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 1)[1].split(" (")[0].split(" in ")[0] for line in lines] == [
        "51%", "done 1000/1000", "33%", "66%", "done 3/3",
    ]  # fmt: skip


def test_a_stage_prints_its_start_and_end_and_a_failing_one_no_end(capsys):
    with stage("slice"):
        pass
    with pytest.raises(RuntimeError), stage("export"):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError), progress("calibrate", 4) as advance:
        advance(1)
        raise RuntimeError("boom")
    with progress("budget search (flash)", None):  # no total: a start line, or nothing would show until its end
        pass
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "[edgeslice] slice: start"
    assert re.fullmatch(r"\[edgeslice\] slice: done in \d+\.\d s", lines[1])
    assert lines[2] == "[edgeslice] export: start"
    assert lines[3].startswith("[edgeslice] calibrate: 25% (1/4) ")
    assert lines[4] == "[edgeslice] budget search (flash): start"
    assert re.fullmatch(r"\[edgeslice\] budget search \(flash\): done in \d+\.\d s", lines[5])
    assert len(lines) == 6  # neither the failed stage nor the failed loop claims to be done


def test_quiet_prints_nothing(capsys):
    set_enabled(False)
    with stage("slice"), progress("fine-tune", 10) as advance:
        for _ in range(10):
            advance(1, loss=0.5)
    assert capsys.readouterr() == ("", "")


def test_a_terminal_keeps_the_rich_bar(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    with stage("slice"), progress("fine-tune", 10) as advance:
        for _ in range(10):
            advance(1, loss=0.5)
    drawn = tty.getvalue()
    assert "fine-tune" in drawn and "10/10" in drawn  # the bar's MofN column
    assert "[edgeslice]" not in drawn


@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``edgeslice compress … --json`` in a real process with stdout and stderr piped (no terminal anywhere)."""
    out = tmp_path_factory.mktemp("progress") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeslice", *COMPRESS, "--out", str(out), "--json"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out


def test_compress_without_a_terminal_logs_every_stage_on_stderr(compressed):
    proc, out = compressed
    report = json.loads(proc.stdout)  # stdout is still one JSON document and nothing else
    assert report["timings_s"] == json.loads((out / "report.json").read_text())["timings_s"]
    lines = proc.stderr.splitlines()
    stages = [k.removesuffix("_s").replace("_", " ") for k in report["timings_s"] if k != "total_s"]
    assert {"baseline", "slice", "restructure", "finetune", "export"} <= set(stages)
    for name in stages:  # every timed stage, in the order it ran: a start line, then its end line
        start = lines.index(f"[edgeslice] {name}: start")
        end = next(i for i, line in enumerate(lines) if line.startswith(f"[edgeslice] {name}: done in "))
        assert start < end, (name, lines)
    assert any(re.match(r"\[edgeslice\] fine-tune: done \d+/\d+ in ", line) for line in lines)  # a loop's end line


def test_quiet_compress_prints_no_progress(compressed, tmp_path):
    """Same run in-process (Click's stderr is no terminal either), baseline now cached: at most a warning line."""
    r = CliRunner().invoke(app, [*COMPRESS, "--finetune-epochs", "0", "--out", str(tmp_path / "q"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert len(r.stderr.strip().splitlines()) <= 1 and "[edgeslice]" not in r.stderr, r.stderr
    assert "[edgeslice]" not in r.stdout and r.stdout.strip()  # the human report, on stdout as before
