"""Progress on stderr, never on stdout: rich bars on an interactive terminal, plain ``[edgeslice] …`` lines otherwise
(CI logs, ``2>build.log``), nothing under ``--quiet`` and on every torch.distributed rank but 0.

Plain lines are one per stage start and end (:func:`stage`) and one per ~10% of a long loop and at its end
(:func:`progress`), each flushed at once so a log shows how far a run has got::

    [edgeslice] slice: start
    [edgeslice] calibrate (taylor): 50% (100/200) 3.1 s, eta 3.1 s
    [edgeslice] calibrate (taylor): done 200/200 in 6.2 s
    [edgeslice] slice: done in 6.4 s
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

PREFIX = "[edgeslice]"
STEPS = 10  # plain lines per loop, at every 1/STEPS of its total

_enabled = True


def set_enabled(flag: bool) -> None:
    """Turn progress bars and progress lines on or off for this process (``--quiet`` turns them off)."""
    global _enabled
    _enabled = flag


def _mode() -> str | None:
    """``"bars"`` on an interactive stderr, ``"lines"`` on any other, ``None`` when progress is off here."""
    from .distributed import is_main

    if not (_enabled and is_main()):
        return None
    return "bars" if sys.stderr.isatty() else "lines"


def _line(text: str) -> None:
    sys.stderr.write(f"{PREFIX} {text}\n")
    sys.stderr.flush()


def _fields(fields: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """A named stage of a command: without a terminal, ``NAME: start`` and ``NAME: done in 1.2 s`` lines.

    A stage that raises ends without a line: the error message that follows says what happened. On a terminal the
    stage's loops draw their own bars and the stage itself draws nothing.
    """
    if _mode() != "lines":
        yield
        return
    _line(f"{name}: start")
    t = time.perf_counter()
    yield
    _line(f"{name}: done in {time.perf_counter() - t:.1f} s")


class _Lines:
    """The plain-line form of a loop's progress: a line per 1/STEPS of ``total`` crossed, and one at the end."""

    def __init__(self, description: str, total: int | None) -> None:
        self.description, self.total = description, total
        self.done, self.step, self.fields = 0, 0, ""
        self.start = time.perf_counter()
        if not total:
            _line(f"{description}: start")  # nothing else would show until it ends

    def advance(self, n: int = 1, **fields) -> None:
        self.done += n
        if fields:
            self.fields = _fields(fields)
        if not self.total or self.done >= self.total:
            return  # the end line reports the last step
        step = self.done * STEPS // self.total
        if step > self.step:
            self.step = step
            elapsed = time.perf_counter() - self.start
            eta = elapsed * (self.total - self.done) / self.done
            info = f" {self.fields}" if self.fields else ""
            _line(
                f"{self.description}: {100 * self.done // self.total}% ({self.done}/{self.total}) "
                f"{elapsed:.1f} s, eta {eta:.1f} s{info}"
            )

    def finish(self) -> None:
        count = f" {self.done}/{self.total}" if self.total else ""
        info = f" {self.fields}" if self.fields else ""
        _line(f"{self.description}: done{count} in {time.perf_counter() - self.start:.1f} s{info}")


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``: a rich bar on an interactive stderr, plain lines on any other (see the
    module docstring), nothing under ``--quiet`` or off rank 0. A loop that raises ends without an end line."""
    mode = _mode()
    if mode is None:
        yield lambda n=1, **fields: None
        return
    if mode == "lines":
        lines = _Lines(description, total)
        yield lines.advance
        lines.finish()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields) -> None:
            bar.update(task, advance=n, **({"info": _fields(fields)} if fields else {}))

        yield advance
