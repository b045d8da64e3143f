"""``manifest.json``: what a pipeline wrote, with the hash of every artifact, the versions and the configuration.

Every command that writes a folder of artifacts ends with :func:`write_manifest`; ``edgeslice verify`` reads it back
with :func:`read_manifest` and :func:`check_files`. The manifest is canonical JSON without timestamps or absolute
paths of its own, so the same configuration and seed give a byte-identical manifest (see docs/artifacts.md).

``report.json`` is the one exception to hashing: it records measurements of the run (wall-clock timings,
onnxruntime latency, whether the baseline came from the cache) that differ between otherwise identical runs. Its
hash would make the manifest differ too, so it is listed under ``volatile`` (present, not hashed) instead of
``files``.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import EdgesliceError
from .files import atomic_write_json, sha256_file

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "edgeslice-manifest"
MANIFEST_VERSION = 1

#: Files that record measurements of one run, not artifacts: listed in the manifest but not hashed.
VOLATILE_FILES: dict[str, str] = {
    "report.json": "measurements of this run (timings, onnxruntime latency, baseline cache hit); differ between runs",
}

#: Libraries whose version decides the bytes of the artifacts.
LIBRARIES = ("torch", "timm", "torch-pruning", "onnx", "onnxscript", "onnxruntime", "numpy", "safetensors")


class ManifestError(EdgesliceError):
    """A missing or unreadable ``manifest.json``."""


def library_versions() -> dict[str, str | None]:
    """Installed versions of :data:`LIBRARIES` and of Python (None for a library that is not installed)."""
    import importlib.metadata as md

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in LIBRARIES:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return versions


def torch_threads() -> int | None:
    """torch's intra-op thread count (None when torch is not loaded).

    Recorded because it changes the bytes: reductions split over another number of threads round differently
    (measured: the MLP baseline on digits trains to other weights with 1 and with 2 threads, repeatably for each).
    """
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def build_manifest(folder: str | Path, config: dict[str, Any], seed: int) -> dict[str, Any]:
    """The manifest of ``folder`` as a dict (see :func:`write_manifest`)."""
    folder = Path(folder)
    files, volatile = {}, {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name == MANIFEST_NAME:
            continue
        if p.name in VOLATILE_FILES:
            volatile[p.name] = VOLATILE_FILES[p.name]
        else:
            files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return {
        "format": MANIFEST_FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "tool": "edgeslice",
        "tool_version": __version__,
        "versions": library_versions(),
        "config": config,
        "seed": seed,
        "torch_threads": torch_threads(),
        "files": files,
        "volatile": volatile,
    }


def write_manifest(folder: str | Path, config: dict[str, Any], seed: int) -> Path:
    """Write ``folder/manifest.json``: sha256 and size of every file, versions, the effective config and seed.

    Args:
        folder: the artifact folder (usually a staging folder); subfolders are not listed.
        config: the effective configuration (``to_dict()`` of the command's config).
        seed: the run's seed.

    Returns:
        The manifest's path.

    Example:
        >>> write_manifest(stage, cfg.to_dict(), cfg.seed)  # doctest: +SKIP
    """
    return atomic_write_json(Path(folder) / MANIFEST_NAME, build_manifest(folder, config, seed))


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read ``folder/manifest.json``.

    Raises:
        ManifestError: the file is missing, not JSON, or lacks the ``files`` table.
    """
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path} not found (not an edgeslice artifact folder)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"cannot read {path}: {e}") from e
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) and "sha256" in v for v in files.values()):
        raise ManifestError(f"{path} has no valid 'files' table")
    if not isinstance(doc.get("volatile", {}), dict):
        raise ManifestError(f"{path} has an invalid 'volatile' table")
    bad = [n for n in [*files, *doc.get("volatile", {})] if not n or "/" in n or "\\" in n or n in (".", "..")]
    if bad:
        raise ManifestError(f"{path} lists {bad[0]!r}, which is not a file name in the folder")
    return doc


@dataclass(frozen=True)
class FileCheck:
    """The state of one file against the manifest.

    Attributes:
        name: file name inside the folder.
        status: ``ok``, ``volatile`` (listed, not hashed), ``missing``, ``tampered`` (hash or size differs) or
            ``extra`` (in the folder, not in the manifest).
    """

    name: str
    status: str

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "volatile")


def check_files(folder: str | Path, manifest: dict[str, Any]) -> list[FileCheck]:
    """Compare every file of ``folder`` with ``manifest``: listed files must exist with their hash, nothing else."""
    folder = Path(folder)
    listed = manifest["files"]
    volatile = manifest.get("volatile", {})
    checks = []
    for name in sorted(set(listed) | set(volatile)):
        p = folder / name
        if not p.is_file():
            checks.append(FileCheck(name, "missing"))
        elif name in volatile:
            checks.append(FileCheck(name, "volatile"))
        else:
            entry = listed[name]
            same = p.stat().st_size == entry.get("bytes", p.stat().st_size) and sha256_file(p) == entry["sha256"]
            checks.append(FileCheck(name, "ok" if same else "tampered"))
    for p in sorted(folder.iterdir()):
        if p.name != MANIFEST_NAME and p.name not in listed and p.name not in volatile:
            checks.append(FileCheck(p.name + ("/" if p.is_dir() else ""), "extra"))
    return checks
