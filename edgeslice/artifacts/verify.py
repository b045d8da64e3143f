"""Re-check an artifact folder before it is shipped: hashes, checkpoint, ONNX parity, index, device budgets.

Example:
    >>> result = verify("edgeslice-out/mobilenetv3_small_100")  # doctest: +SKIP
    >>> result.ok, [c.name for c in result.failed]  # doctest: +SKIP
    (True, [])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EdgesliceError
from .manifest import check_files, read_manifest

#: Random inputs used for the ONNX parity check (seeded, so a verification is repeatable).
PARITY_SAMPLES = 8
#: Runtimes that can run the ONNX checks (``openvino`` needs the ``edgeslice[openvino]`` extra).
RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class Check:
    """One verification step.

    Attributes:
        name: what was checked (``file model.onnx``, ``checkpoint``, ``onnx parity``, ``index``, ``budget ram``…).
        status: ``ok``, ``fail`` or ``skip`` (not applicable, e.g. no device in the config).
        detail: one line for a person.
    """

    name: str
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "fail"


@dataclass
class VerifyResult:
    """Every check of one folder; ``ok`` when none failed."""

    folder: str
    checks: list[Check] = field(default_factory=list)
    runtime: dict[str, Any] = field(default_factory=lambda: {"name": "onnxruntime"})

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "ok": self.ok,
            "runtime": self.runtime,
            "checks": [asdict(c) for c in self.checks],
        }


def verify(folder: str | Path, *, samples: int = PARITY_SAMPLES, runtime: str = "onnxruntime") -> VerifyResult:
    """Check an artifact folder written by ``compress``/``run`` (or any command that writes a manifest).

    In order: every file against ``manifest.json`` (missing, extra or changed files fail), the checkpoint loads and
    matches its fingerprint, every ONNX file runs in ``runtime`` (``model.onnx`` must match PyTorch within
    :func:`edgeslice.deploy.export.check_parity`'s tolerance), the critical index reads and belongs to the model, the
    report's parameter count matches the checkpoint, and, when the configuration names a device, the artifacts meet
    its budgets. A step whose input is absent is skipped, never failed, except the manifest itself.

    The reference outputs are the checkpoint's, computed with PyTorch on ``samples`` seeded random inputs (the same
    inputs and reference for either runtime). With ``runtime="openvino"`` the ONNX files are compiled in f32
    (:mod:`edgeslice.deploy.openvino_runtime` says why); ``result.runtime`` records the version, the precision used
    and the CPU's default precision.

    Args:
        folder: the artifact folder.
        samples: random inputs for the parity check.
        runtime: ``onnxruntime`` or ``openvino``.

    Returns:
        The checks; ``result.ok`` is False when any failed.

    Raises:
        ValueError: an unknown runtime; MissingExtraError: ``openvino`` without the extra (before any check).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if runtime == "openvino":
        from ..deploy.openvino_runtime import import_openvino

        version = import_openvino().__version__.split("-")[0]
    else:
        import onnxruntime

        version = onnxruntime.__version__
    folder = Path(folder)
    result = VerifyResult(str(folder), runtime={"name": runtime, "version": version})
    add = result.checks.append
    try:
        manifest = read_manifest(folder)
    except EdgesliceError as e:
        add(Check("manifest", "fail", str(e)))
        return result
    add(Check("manifest", "ok", f"{len(manifest['files'])} files, edgeslice {manifest.get('tool_version', '?')}"))
    details = {
        "ok": "sha256 matches",
        "volatile": "present (measurements, not hashed)",
        "missing": "missing",
        "tampered": "changed: sha256 differs from the manifest",
        "extra": "not in the manifest",
    }
    for fc in check_files(folder, manifest):
        add(Check(f"file {fc.name}", "ok" if fc.ok else "fail", details[fc.status]))
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}

    model, meta = _check_checkpoint(folder, add)
    _check_onnx(folder, model, meta, samples, add, result if runtime == "openvino" else None)
    _check_index(folder, model, meta, add)
    _check_report(folder, model, add)
    _check_budgets(folder, config, "int8" if "model.int8.onnx" in manifest["files"] else "fp32", add)
    return result


def _check_checkpoint(folder: Path, add):
    from ..models import load_checkpoint

    if not (folder / "model.safetensors").is_file() and not (folder / "model.json").is_file():
        add(Check("checkpoint", "skip", "no model.safetensors in the folder"))
        return None, None
    try:
        model, meta = load_checkpoint(folder)
    except EdgesliceError as e:
        add(Check("checkpoint", "fail", str(e)))
        return None, None
    n = sum(p.numel() for p in model.parameters())
    add(Check("checkpoint", "ok", f"{meta.timm_name}, {n:,} parameters, fingerprint {meta.fingerprint[:12]}"))
    return model, meta


def _check_onnx(folder: Path, model, meta, samples: int, add, openvino: VerifyResult | None = None) -> None:
    """Every ONNX file against the checkpoint, in onnxruntime, or in OpenVINO when ``openvino`` is the result to
    record its runtime in."""
    import torch

    from ..deploy.export import check_parity

    paths = sorted(p for p in folder.glob("*.onnx") if p.is_file())
    if not paths:
        add(Check("onnx", "skip", "no ONNX file in the folder"))
        return
    if meta is None:
        for p in paths:
            add(Check(f"onnx {p.name}", "skip", "no checkpoint to compare with"))
        return
    from ..data import make_prepare

    g = torch.Generator().manual_seed(0)
    size = meta.input_size
    x = make_prepare(meta)(torch.rand(samples, meta.in_chans, size, size, generator=g))
    runtime = "onnxruntime" if openvino is None else "openvino"
    for p in paths:
        name = f"onnx {p.name}" + (" (openvino)" if openvino is not None else "")
        try:
            if openvino is not None:
                add(_openvino_onnx(p, model, x, name, openvino))
            elif p.name == "model.onnx":
                diff = check_parity(model, p, x)
                add(Check(name, "ok", f"onnxruntime = PyTorch (max |Δ| {diff:.2e}, {samples} inputs)"))
            else:
                add(_run_onnx(p, model, x, name))
        except EdgesliceError as e:
            add(Check(name, "fail", str(e)))
        except Exception as e:  # noqa: BLE001 - the runtimes raise their own types for a corrupt file
            add(Check(name, "fail", f"{runtime} cannot run {p.name}: {str(e).splitlines()[0] if str(e) else e!r}"))


def _openvino_onnx(path: Path, model, x, name: str, result: VerifyResult) -> Check:
    """One ONNX file in OpenVINO (f32) against the PyTorch reference: ``model.onnx`` within the parity tolerance of
    :func:`edgeslice.deploy.export.check_parity`; any other file (int8) must run with logits of the right shape,
    its max |Δ| and top-1 agreement with PyTorch and with onnxruntime on the same file reported."""
    import numpy as np
    import torch

    from ..deploy.export import ort_session, parity_tolerance
    from ..deploy.openvino_runtime import run_openvino

    got, info = run_openvino(path, x.numpy())
    result.runtime.update(info)
    with torch.no_grad():
        ref = model(x).numpy()
    if got.shape != ref.shape or not np.isfinite(got).all():
        return Check(name, "fail", f"output {got.shape} (finite: {bool(np.isfinite(got).all())}), expected {ref.shape}")
    diff, agree = float(np.abs(got - ref).max()), float((got.argmax(1) == ref.argmax(1)).mean())
    default = info["cpu_default_precision"]
    how = f"OpenVINO {info['precision']} (forced with {info['forced']}; this CPU's default: {default})"
    versus = f"max |Δ| {diff:.2e}, top-1 agreement {agree:.0%}, {len(x)} inputs"
    if path.name == "model.onnx":
        tol = parity_tolerance(ref)
        if not diff <= tol:
            return Check(name, "fail", f"{how} vs PyTorch: {versus}; parity needs max |Δ| <= {tol:.3g}")
        return Check(name, "ok", f"{how} = PyTorch: {versus}")
    sess = ort_session(path)
    ort_out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    d_ort, a_ort = float(np.abs(got - ort_out).max()), float((got.argmax(1) == ort_out.argmax(1)).mean())
    return Check(
        name,
        "ok",
        f"{how} runs; vs PyTorch fp32: {versus}; vs onnxruntime on this file: max |Δ| {d_ort:.2e}, top-1 agreement "
        f"{a_ort:.0%} (not a parity check: quantized)",
    )


def _run_onnx(path: Path, model, x, name: str) -> Check:
    """Another ONNX file of the model (e.g. ``model.int8.onnx``): it must run and give logits of the right shape."""
    import numpy as np
    import torch

    from ..deploy.export import ort_session

    sess = ort_session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    if got.shape != ref.shape or not np.isfinite(got).all():
        return Check(name, "fail", f"output {got.shape} (finite: {bool(np.isfinite(got).all())}), expected {ref.shape}")
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    return Check(name, "ok", f"runs; top-1 agrees with PyTorch on {agree:.0%} of random inputs (not a parity check)")


def _check_index(folder: Path, model, meta, add) -> None:
    import torch

    from ..data import make_prepare
    from ..index import CriticalIndex
    from ..slicing import find_layers

    path = folder / "critical_index"
    if not path.is_file():
        add(Check("index", "skip", "no critical_index in the folder"))
        return
    try:
        index = CriticalIndex.load(path)
    except EdgesliceError as e:
        add(Check("index", "fail", str(e)))
        return
    summary = f"{sum(int(m.sum()) for m in index.critical.values())} critical channels in {len(index.layers)} layers"
    if model is None:
        add(Check("index", "ok", f"{summary} (not checked against a model: no checkpoint)"))
        return
    example = make_prepare(meta)(torch.zeros(1, meta.in_chans, meta.input_size, meta.input_size))
    layers = [{"name": la.name, "channels": la.channels} for la in find_layers(model, example)]
    try:
        if index.model_fingerprint == meta.fingerprint:
            index.check_model(meta.timm_name, layers, meta.fingerprint)
            add(Check("index", "ok", f"{summary}, bound to this checkpoint"))
        elif meta.restructured and index.model_fingerprint == meta.info.get("source_fingerprint"):
            _check_restructured(index, meta.timm_name, layers)
            add(Check("index", "ok", f"{summary}, bound to the model this checkpoint was restructured from"))
        else:
            add(
                Check(
                    "index",
                    "fail",
                    f"index was sliced from model {index.model_fingerprint[:12]}…, neither this checkpoint "
                    f"({meta.fingerprint[:12]}…) nor the model it was restructured from",
                )
            )
    except EdgesliceError as e:
        add(Check("index", "fail", str(e)))


def _check_restructured(index, timm_name: str, layers: list[dict[str, Any]]) -> None:
    """A restructured model keeps every layer of the index, with between its critical (1 for a width rule other
    than ``theta``) and its original channels."""
    from ..errors import IndexFileError

    if timm_name != index.timm_name:
        raise IndexFileError(f"index is for {index.timm_name!r}, not {timm_name!r}")
    kept = {la["name"]: la["channels"] for la in layers}
    if [e["name"] for e in index.layers] != [la["name"] for la in layers]:
        raise IndexFileError(f"index layers do not match the model ({len(index.layers)} vs {len(layers)} layers)")
    # ``compress --widths cap|lamp`` keeps the θ slice's size, not its critical channels: each layer keeps ≥ 1
    widths = index.params.get("widths", "theta")
    for e in index.layers:
        critical = int(index.critical[e["name"]].sum()) if widths == "theta" else 1
        if not critical <= kept[e["name"]] <= e["channels"]:
            raise IndexFileError(
                f"layer {e['name']!r} has {kept[e['name']]} channels; the index needs {critical}..{e['channels']}"
            )


def _grown_on_device(folder: Path) -> int:
    """How many classes ``edgeslice-device add-class`` added since report.json was written (0 without a bundle):
    the device grows the classifier and does not rewrite the host's report."""
    try:
        doc = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
        return sum(1 for e in doc.get("history", []) if e.get("op") == "add-class")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return 0


def _check_report(folder: Path, model, add) -> None:
    path = folder / "report.json"
    if not path.is_file():
        return
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        add(Check("report", "fail", f"report.json is not JSON: {e}"))
        return
    grown = _grown_on_device(folder)
    if grown:
        add(Check("report", "ok", f"valid JSON (describes the model before {grown} device increment(s))"))
        return
    if model is not None and isinstance(report, dict) and isinstance(report.get("params_after"), int):
        n = sum(p.numel() for p in model.parameters())
        if n != report["params_after"]:
            add(
                Check("report", "fail", f"report.json says {report['params_after']:,} parameters, checkpoint has {n:,}")
            )
            return
        add(Check("report", "ok", f"parameter count matches the checkpoint ({n:,})"))
        return
    add(Check("report", "ok", "valid JSON"))


def _check_budgets(folder: Path, config: dict[str, Any], precision: str, add) -> None:
    """``precision``: int8 when the manifest lists ``model.int8.onnx`` (the budget search may pick int8 on its own;
    the hashed file list says so, where report.json is not hashed)."""
    device = config.get("device")
    if not device:
        add(Check("budgets", "skip", "not checked (no device)"))
        return
    try:
        from ..deploy.budget import measure_artifacts
        from ..deploy.devices import get_device
    except ImportError as e:  # pragma: no cover - devices ship with edgeslice
        add(Check("budgets", "fail", f"device {device!r} named, but device profiles are unavailable: {e}"))
        return
    try:
        profile = get_device(device)
        measured = measure_artifacts(folder, precision)
        checks = profile.check(measured)
    except (EdgesliceError, ValueError) as e:
        add(Check("budgets", "fail", f"device {device!r}: {e}"))
        return
    for c in checks:
        add(Check(f"budget {c.name}", "ok" if c.ok else "fail", f"{profile.name}: {c.describe()}"))
