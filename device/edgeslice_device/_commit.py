"""Replacing a bundle folder atomically: stage beside it, then swap the two folders in one rename.

A grown bundle is built in ``.<name>.edgeslice-staging-<pid>`` next to ``BUNDLE`` (unchanged files hard-linked,
changed ones written; every file and the folder fsynced), then exchanged with ``BUNDLE`` by Linux
``renameat2(RENAME_EXCHANGE)``: ``BUNDLE`` is the old folder or the new one, never a mix, whenever the process dies.
The old bundle, now at the staging path, is then removed.

Every folder this module creates or moves aside is announced first by a marker file beside it
(``<folder>.marker``), so the next run removes exactly what an interrupted one left, and nothing else. Where
``RENAME_EXCHANGE`` is unavailable, ``BUNDLE`` is renamed to ``.<name>.edgeslice-old-<pid>`` and the staging folder
to ``BUNDLE``; :func:`recover` puts the old folder back if the process died between the two renames.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import time
from pathlib import Path

from ._files import fsync_path
from .errors import BundleError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
MARKER_SUFFIX = ".marker"
#: Test hook: the process announces and sleeps at this stage, so a test can kill it there deterministically.
PAUSE_ENV = "EDGESLICE_DEVICE_TEST_PAUSE"
#: Test hook: force the two-rename fallback.
NO_EXCHANGE_ENV = "EDGESLICE_DEVICE_NO_EXCHANGE"


def pause_point(stage: str) -> None:
    """Sleep forever at ``stage`` when :data:`PAUSE_ENV` names it (tests kill the process there)."""
    if os.environ.get(PAUSE_ENV) == stage:
        sys.stderr.write(f"EDGESLICE_DEVICE_PAUSED {stage}\n")
        sys.stderr.flush()
        while True:
            time.sleep(60)


def staging_path(bundle: Path) -> Path:
    """The staging folder of this process."""
    return bundle.parent / f".{bundle.name}.edgeslice-staging-{os.getpid()}"


def _old_path(bundle: Path) -> Path:
    return bundle.parent / f".{bundle.name}.edgeslice-old-{os.getpid()}"


def _marker(folder: Path) -> Path:
    return folder.with_name(folder.name + MARKER_SUFFIX)


def _write_marker(folder: Path) -> None:
    marker = _marker(folder)
    with open(marker, "wb") as f:
        f.write(b"edgeslice-device: the folder beside this file is temporary and may be deleted\n")
        os.fsync(f.fileno())
    fsync_path(folder.parent)


def _remove_marked(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    _marker(folder).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(bundle: Path, kind: str) -> list[Path]:
    """Folders of ``kind`` (staging/old) left by dead processes for ``bundle``, known by their marker."""
    prefix = f".{bundle.name}.edgeslice-{kind}-"
    found = []
    for marker in bundle.parent.glob(f"{prefix}*{MARKER_SUFFIX}"):
        pid = marker.name[len(prefix) : -len(MARKER_SUFFIX)]
        if pid.isdigit() and not _alive(int(pid)):
            found.append(marker.with_name(marker.name[: -len(MARKER_SUFFIX)]))
    return sorted(found)


def recover(bundle: str | Path) -> None:
    """Undo what an interrupted update left: restore a moved-aside bundle, remove stale staging folders.

    Raises:
        BundleError: a leftover cannot be restored or removed (permissions).
    """
    bundle = Path(bundle).absolute()
    if not bundle.parent.is_dir():
        return
    try:
        for old in _leftovers(bundle, "old"):
            if not bundle.exists() and old.is_dir():
                os.rename(old, bundle)  # died between the two renames of the fallback: the old bundle is whole
                fsync_path(bundle.parent)
            _remove_marked(old)
        for stage in _leftovers(bundle, "staging"):
            _remove_marked(stage)
    except OSError as e:
        raise BundleError(f"cannot clean up after an interrupted update of {bundle}: {e.strerror or e}") from e


def create_staging(bundle: Path) -> Path:
    """Create this process's (marked) staging folder beside ``bundle``, and check ``bundle`` itself is writable.

    Probing by writing is what works for every user: ``os.access`` says yes to root even on a read-only folder.

    Raises:
        BundleError: the bundle's folder or its parent cannot be written.
    """
    stage = staging_path(bundle)
    try:
        _write_marker(stage)
        stage.mkdir()
    except OSError as e:
        _marker(stage).unlink(missing_ok=True)
        raise BundleError(f"cannot write beside {bundle} (its parent folder is read-only?): {e.strerror or e}") from e
    probe = bundle / f".edgeslice-probe-{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        _remove_marked(stage)
        raise BundleError(f"bundle {bundle} is read-only ({e.strerror or e})") from e
    return stage


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (copy when the filesystem cannot link)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
        fsync_path(dst)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where the kernel or libc cannot."""
    if os.environ.get(NO_EXCHANGE_ENV) or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def swap_in(bundle: Path, stage: Path) -> None:
    """Make ``stage`` (complete, fsynced) the bundle, atomically, and remove the old bundle."""
    for p in stage.iterdir():
        fsync_path(p)
    fsync_path(stage)
    pause_point("staged")
    if _exchange(stage, bundle):
        pause_point("swapped")
        fsync_path(bundle.parent)
        pause_point("cleanup")
        _remove_marked(stage)  # the old bundle, now at the staging path
    else:
        old = _old_path(bundle)
        _write_marker(old)
        os.rename(bundle, old)
        pause_point("moved-aside")
        os.rename(stage, bundle)
        fsync_path(bundle.parent)
        pause_point("cleanup")
        _marker(stage).unlink(missing_ok=True)
        _remove_marked(old)
    fsync_path(bundle.parent)


def abort(bundle: Path, stage: Path) -> None:
    """After a failure: remove this process's staging folder and put a moved-aside bundle back (best effort)."""
    try:
        _remove_marked(stage)
        recover(bundle)
    except (OSError, BundleError):
        pass  # the next run's recover() finishes the job
