"""Output folders: claimed before any work, written all or nothing, and never at the expense of a user's file.

A command that writes ``--out`` first calls :func:`claim_output` (the CLI does it before loading anything):

- the path is checked: an existing *file*, or a folder that cannot be written, is refused at once, not after minutes
  of training;
- the folder is locked with ``flock`` for the whole run, so a second run into the same folder fails at once with a
  clear message instead of interleaving its artifacts (the kernel drops the lock when a process dies, even by
  SIGKILL, so a dead run never blocks the next one);
- staging folders that dead runs left beside it (``.NAME.staging.*``, marked as edgeslice's) are removed;
- a file in the folder that the run may write, but that edgeslice did not write (or that changed since), is refused.

:func:`staging_dir` then yields an empty scratch folder beside ``--out`` and, only when the block succeeds, moves its
files in. The previous run's artifacts (``manifest.json``) are removed first, but only those whose content still has
the sha256 the manifest recorded: a file the user edited since is kept, and a warning names it.

What edgeslice owns in a folder is exactly what its manifest says: files listed with a matching sha256, the files it
lists as volatile (``report.json``: measurements, not hashed, see :mod:`.manifest`), and the manifest itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import OutputError
from .files import rank_scratch, sha256_file
from .manifest import MANIFEST_NAME, ManifestError, read_manifest, write_manifest

#: Every file name an edgeslice command may write into ``--out`` (checked before any work starts).
ARTIFACT_NAMES = frozenset(
    {
        "accuracy_vs_cr.png",
        "critical_index",
        "critical_index.h",
        "critical_ratio.png",
        MANIFEST_NAME,
        "masking.csv",
        "model.int8.onnx",
        "model.json",
        "model.onnx",
        "model.safetensors",
        "recipe.effective.toml",
        "report.json",
        "rq1.csv",
        "rq1.json",
        "rq1.png",
        "slice.json",
    }
)

#: A staging folder carries this file, so that only folders edgeslice made are ever removed as stale.
STAGING_MARK = ".edgeslice-staging"

_claims: dict[Path, int] = {}  # resolved --out → the descriptor holding its lock (this process's claims)


def _key(out: Path) -> Path:
    return out.absolute().resolve()


def _staging_prefix(out: Path) -> str:
    return f".{out.name}.staging."


def check_output_path(out: str | Path) -> None:
    """Refuse an ``--out`` that cannot become an artifact folder (before any work).

    Raises:
        OutputError: ``out`` is an existing file, or it (or the folder it would be created in) is not writable.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} exists and is not a folder")
    if out.is_dir():
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputError(f"--out {out} is not writable")
        return
    ancestor = out.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot create --out {out}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create --out {out}: {ancestor} is not writable")


def owned_files(out: Path) -> set[str]:
    """Names of the files in ``out`` that edgeslice wrote and nobody changed since (see the module docstring)."""
    try:
        doc = read_manifest(out)  # validates that every listed name is a plain file name in the folder
    except ManifestError:
        return set()
    owned = {MANIFEST_NAME}
    for name, entry in doc["files"].items():
        p = out / name
        if p.is_file() and not p.is_symlink() and sha256_file(p) == entry["sha256"]:
            owned.add(name)
    owned.update(n for n in doc.get("volatile", {}) if (out / n).is_file() and not (out / n).is_symlink())
    return owned


def check_no_foreign_files(out: Path, names: Iterable[str]) -> None:
    """Refuse to overwrite any of ``names`` in ``out`` that edgeslice did not write (or that changed since).

    Raises:
        OutputError: naming the first such file.
    """
    present = sorted(n for n in names if (out / n).exists() or (out / n).is_symlink())
    if not present:
        return
    owned = owned_files(out)
    foreign = [n for n in present if n not in owned]
    if foreign:
        raise OutputError(
            f"{out / foreign[0]} was not written by edgeslice or has changed since; "
            "move it away or choose another --out"
        )


def _remove_stale_staging(out: Path) -> None:
    """Remove the staging folders of dead runs beside ``out`` (the caller holds the lock, so no live run owns one)."""
    for p in out.absolute().parent.glob(_staging_prefix(out) + "*"):
        if p.is_dir() and not p.is_symlink() and (p / STAGING_MARK).is_file():
            shutil.rmtree(p, ignore_errors=True)


def _lock(out: Path) -> int:
    """Lock the folder ``out`` (it exists) for this process, or raise if another run holds it."""
    for _ in range(5):
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"another edgeslice run is writing to {out}; wait for it to finish or choose another --out"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(out))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the folder was replaced between open and lock: lock the new one
    raise OutputError(f"--out {out} keeps changing under this run")


@contextlib.contextmanager
def claim_output(out: str | Path, names: Iterable[str] = ARTIFACT_NAMES) -> Iterator[Path]:
    """Hold ``out`` for one run: checked, locked, cleaned of dead runs' staging folders (see the module docstring).

    Folders this call creates are removed again when the run fails and they are still empty. Re-entrant within a
    process. On a torch.distributed rank other than 0 (which never writes ``out``) it does nothing.

    Raises:
        OutputError: the path is unusable, another run holds it, or it holds a file of ``names`` edgeslice did not
            write.
    """
    from ..distributed import is_main

    out = Path(out)
    if not is_main() or _key(out) in _claims:
        yield out
        return
    check_output_path(out)
    created: list[Path] = []
    for d in reversed([out.absolute(), *out.absolute().parents]):
        if not d.exists():
            created.append(d)
    out.mkdir(parents=True, exist_ok=True)
    ok = False
    fd = None
    try:
        fd = _lock(out)
        _claims[_key(out)] = fd
        _remove_stale_staging(out)
        check_no_foreign_files(out, names)
        yield out
        ok = True
    finally:
        if fd is not None:
            _claims.pop(_key(out), None)
        if not ok:
            for d in reversed(created):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if still empty
        if fd is not None:
            os.close(fd)


def remove_previous_artifacts(out: Path) -> list[str]:
    """Delete the files an earlier run listed in ``out/manifest.json`` whose content is unchanged (never others).

    Returns:
        The listed files that were kept because their content changed since that run.
    """
    try:
        doc = read_manifest(out)
    except ManifestError:
        return []
    owned = owned_files(out)
    kept = []
    for name in (*doc["files"], *doc.get("volatile", {}), MANIFEST_NAME):
        target = out / name
        if not target.is_file() or target.is_symlink():
            continue
        if name in owned:
            target.unlink()
        else:
            kept.append(name)
    return kept


@contextlib.contextmanager
def staging_dir(out: str | Path, *, config: dict | None = None, seed: int | None = None) -> Iterator[Path]:
    """Yield an empty scratch folder beside ``out``; on success move its files into ``out``.

    On any exception the scratch folder is removed and ``out`` is left as it was, so a failed command never leaves
    partial artifacts behind. On a torch.distributed rank other than 0 the folder is a throw-away one in the
    system temp dir: everything written there is deleted and ``out`` is never touched.

    With ``config`` and ``seed``, a ``manifest.json`` of what was staged is written before the move unless the body
    wrote one: what a folder's manifest lists is what a later run into the same ``out`` may replace.

    Raises:
        OutputError: another run holds ``out``, or a staged file would overwrite a file edgeslice did not write.
    """
    from ..distributed import is_main

    out = Path(out)
    if not is_main():
        with rank_scratch() as scratch:
            yield scratch
        return
    with claim_output(out, names=()):
        root = Path(tempfile.mkdtemp(prefix=_staging_prefix(out), dir=out.absolute().parent))
        (root / STAGING_MARK).touch()
        staging = root / "files"  # the artifacts alone: what the manifest lists is exactly what moves into out
        staging.mkdir()
        try:
            yield staging
            if config is not None and seed is not None and not (staging / MANIFEST_NAME).exists():
                write_manifest(staging, config, seed)
            staged = sorted(staging.iterdir())
            check_no_foreign_files(out, [p.name for p in staged])
            kept = remove_previous_artifacts(out)
            for item in staged:
                os.replace(item, out / item.name)  # check_no_foreign_files: only our own files are replaced
            if kept:
                sys.stderr.write(
                    f"warning: kept {len(kept)} file(s) in {out} that changed since the previous run: "
                    f"{', '.join(kept)}\n"
                )
        finally:
            shutil.rmtree(root, ignore_errors=True)
