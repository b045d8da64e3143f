"""Atomic file writing, canonical JSON, hashing and PNG figures.

Every artifact edgeslice writes goes through here, so a crash or a bad input never leaves a half-written file.

Under torch.distributed only rank 0 writes. The other ranks run the same code (so collectives stay matched and
the code needs no rank checks), but :func:`rank_scratch` (used by :func:`edgeslice.artifacts.staging.staging_dir`)
hands them a throw-away folder in the system temp dir that is deleted afterwards, and :func:`atomic_write_bytes`
drops their writes anywhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_scratch: list[Path] = []  # this rank's throw-away staging folders (ranks other than 0 only)


def _discarded(path: Path) -> bool:
    """Whether this process must not write ``path``: it is not rank 0 and ``path`` is outside its scratch."""
    from ..distributed import is_main

    if is_main():
        return False
    p = path.absolute()
    return not any(p.is_relative_to(root) for root in _scratch)


@contextlib.contextmanager
def rank_scratch() -> Iterator[Path]:
    """A throw-away folder for a torch.distributed rank other than 0: writes inside it are kept, then deleted."""
    from ..distributed import rank

    scratch = Path(tempfile.mkdtemp(prefix=f"edgeslice-rank{rank()}-")).absolute()
    _scratch.append(scratch)
    try:
        yield scratch
    finally:
        _scratch.remove(scratch)
        shutil.rmtree(scratch, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def canonical_json(obj: Any) -> bytes:
    """Serialise to JSON bytes that are identical for equal inputs (sorted keys, fixed separators)."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename it into place.

    On a torch.distributed rank other than 0 nothing is written unless ``path`` is in its :func:`staging_dir`.
    """
    path = Path(path)
    if _discarded(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as canonical JSON, atomically."""
    return atomic_write_bytes(path, canonical_json(obj))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (imported on first use: keeps the CLI start fast)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically, without a timestamp (same figure, same bytes); closes it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, metadata={"Software": None})
        os.replace(tmp, path)
    finally:
        pyplot().close(fig)
        tmp.unlink(missing_ok=True)
    return path
