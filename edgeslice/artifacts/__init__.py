"""Artifact folders: atomic writes, all-or-nothing staging into ``--out``, the manifest, and ``edgeslice verify``.

Everything edgeslice writes to disk goes through :mod:`.files` (atomic single files) and :mod:`.staging` (whole
folders); :mod:`.manifest` records what was written and :mod:`.verify` checks a folder against it. This package
imports nothing heavy at import time (the verifier loads torch and onnxruntime when it runs).
"""

from .files import atomic_write_bytes as atomic_write_bytes
from .files import atomic_write_json as atomic_write_json
from .files import canonical_json as canonical_json
from .files import save_figure as save_figure
from .files import sha256_file as sha256_file
from .manifest import read_manifest as read_manifest
from .manifest import write_manifest as write_manifest
from .staging import claim_output as claim_output
from .staging import staging_dir as staging_dir
