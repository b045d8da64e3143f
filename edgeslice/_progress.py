"""Rich progress bars on stderr, silent when stderr is not a terminal, when JSON output was asked for, and on every
torch.distributed rank but 0."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

_enabled = True


def set_enabled(flag: bool) -> None:
    """Turn progress bars on or off for this process (``--json`` turns them off)."""
    global _enabled
    _enabled = flag


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``; draws a bar only on an interactive stderr, and only on rank 0."""
    from .distributed import is_main

    if not (_enabled and sys.stderr.isatty() and is_main()):
        yield lambda n=1, **fields: None
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
            info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            bar.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance
