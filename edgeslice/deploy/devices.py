"""Device profiles (``devices/*.toml``): storage, RAM and latency budgets a compressed model must meet.

A profile is a small TOML file with explicit units::

    name = "rpi-zero-2w"
    description = "Raspberry Pi Zero 2 W (4x Cortex-A53 @ 1 GHz, 512 MiB LPDDR2)"
    flash = "64 MiB"            # storage budget for the model file
    ram = "128 MiB"             # weights + peak activations at the input size, batch 1
    latency = "100 ms"          # estimated latency budget, batch 1
    precisions = ["fp32", "int8"]
    opset = 17                  # highest ONNX opset the device's runtime takes
    ram_counts_weights = true   # false on MCUs whose runtime executes weights in place from flash
    threads = 4                 # CPU threads the runtime runs one inference on (default 1)

    [macs_per_s]                # rough sustained throughput per precision (the latency estimate divides by it)
    fp32 = "1 GMAC/s"
    int8 = "2 GMAC/s"
    macs_per_s_source = "..."   # where that figure comes from (top level)

Estimated latency = MACs / ``macs_per_s[precision]``: a first-order number for choosing a model, not a measurement
on the device. ``threads`` is how many threads ``compress --device`` gives onnxruntime when it measures
``latency_device`` on the host (never more than the host's cores).

Example:
    >>> from edgeslice.deploy.devices import get_device
    >>> profile = get_device("rpi4")
    >>> [c.ok for c in profile.check({"model_bytes": 2_000_000, "ram_bytes": 9_000_000, "macs": 60_000_000,
    ...                              "precision": "fp32", "opset": 17})]
    [True, True, True, True, True]
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from ..errors import EdgesliceError

PROFILE_VERSION = 1
PRECISIONS = ("fp32", "int8")

#: Bytes per stored weight / activation element of each precision.
BYTES_PER_ELEMENT = {"fp32": 4, "int8": 1}

_BYTE_UNITS = {
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}
_TIME_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE_UNITS = {"MAC/s": 1.0, "kMAC/s": 1e3, "MMAC/s": 1e6, "GMAC/s": 1e9, "TMAC/s": 1e12}
_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(\S+)\s*$")


class ProfileError(EdgesliceError, ValueError):
    """A device profile that is missing, malformed, or uses an unknown unit."""


def _quantity(value: Any, units: dict[str, float], what: str, where: str) -> float:
    if not isinstance(value, str):
        raise ProfileError(
            f'{where}: {what} must be a string with a unit ({", ".join(units)}), e.g. "2 MiB", got {value!r}'
        )
    m = _QUANTITY.match(value)
    if m is None:
        raise ProfileError(f'{where}: cannot read {what} {value!r}: write a number and a unit, e.g. "512 KiB"')
    number, unit = float(m.group(1)), m.group(2)
    if unit not in units:
        raise ProfileError(f"{where}: unknown unit {unit!r} in {what} {value!r}; valid: {', '.join(units)}")
    if not math.isfinite(number) or number <= 0:
        raise ProfileError(f"{where}: {what} must be > 0, got {value!r}")
    return number * units[unit]


def parse_bytes(value: Any, what: str = "size", where: str = "profile") -> int:
    """``"512 KiB"`` → 524288. Units: B, kB/KB/MB/GB (powers of 1000), KiB/MiB/GiB (powers of 1024).

    Raises:
        ProfileError: no unit, an unknown unit, or a value that is not > 0.
    """
    return int(round(_quantity(value, _BYTE_UNITS, what, where)))


def parse_seconds(value: Any, what: str = "latency", where: str = "profile") -> float:
    """``"50 ms"`` → 0.05. Units: us, ms, s."""
    return _quantity(value, _TIME_UNITS, what, where)


def parse_rate(value: Any, what: str = "macs_per_s", where: str = "profile") -> float:
    """``"2.5 GMAC/s"`` → 2.5e9 multiply-accumulates per second."""
    return _quantity(value, _RATE_UNITS, what, where)


def format_bytes(n: float) -> str:
    """Bytes in binary units (``1.5 MiB``), for messages."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.2f} GiB"


@dataclass(frozen=True)
class BudgetCheck:
    """One budget of a profile against one measured value.

    Attributes:
        name: ``flash``, ``ram``, ``latency``, ``opset`` or ``precision``.
        limit: The budget (bytes, ms, the highest opset; for ``precision`` the supported precisions).
        value: The measured or estimated value in the same unit (for ``precision`` the model's precision).
        ok: Whether the value is within the budget.
        margin: ``limit - value`` (negative: over budget by that much); None for ``precision``.
        unit: ``bytes``, ``ms``, ``opset`` or ``""``.
    """

    name: str
    limit: float | str
    value: float | str
    ok: bool
    margin: float | None
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """``ram 3.1 MiB > 512.0 KiB (over by 2.6 MiB)``-style one-line summary."""
        if self.margin is None:
            return f"{self.name} {self.value} {'in' if self.ok else 'not in'} {{{self.limit}}}"
        fmt = _formatter(self.unit)
        rel = "<=" if self.ok else ">"
        side = "headroom" if self.ok else "over by"
        return f"{self.name} {fmt(self.value)} {rel} {fmt(self.limit)} ({side} {fmt(abs(self.margin))})"


def _formatter(unit: str):
    if unit == "bytes":
        return format_bytes
    if unit == "ms":
        return lambda v: f"{v:.3g} ms"
    return lambda v: f"{v:g}"


_KEYS = {
    "name",
    "description",
    "flash",
    "ram",
    "latency",
    "macs_per_s",
    "macs_per_s_source",
    "precisions",
    "opset",
    "ram_counts_weights",
    "threads",
    "notes",
    "version",
}


@dataclass(frozen=True)
class DeviceProfile:
    """Budgets of one target device (see the module docstring for the TOML form).

    Attributes:
        name: Registry name (the file stem for the bundled profiles).
        description: Hardware in one line.
        flash_bytes: Storage budget for the model file.
        ram_bytes: RAM budget for the model at batch 1: peak activations, plus the weights unless
            ``ram_counts_weights`` is false.
        latency_s: Budget for the estimated batch-1 latency.
        macs_per_s: Rough sustained multiply-accumulates per second for each supported precision.
        macs_per_s_source: Where those figures come from.
        precisions: Supported precisions, in order of preference.
        opset: Highest ONNX opset the device's runtime accepts.
        ram_counts_weights: False where the runtime reads weights in place from flash (MCUs).
        threads: CPU threads the device's runtime runs one inference on (``latency_device`` is measured with as
            many, up to the host's cores).
        notes: Anything else a reader should know.
        source: File the profile was read from ("" when built in code).
    """

    name: str
    description: str
    flash_bytes: int
    ram_bytes: int
    latency_s: float
    macs_per_s: dict[str, float]
    macs_per_s_source: str
    precisions: tuple[str, ...] = ("fp32", "int8")
    opset: int = 17
    ram_counts_weights: bool = True
    threads: int = 1
    notes: str = ""
    source: str = field(default="", compare=False)
    version: int = PROFILE_VERSION

    def __post_init__(self) -> None:
        where = f"device profile {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise ProfileError("device profile needs a non-empty name")
        for what, v in (("flash", self.flash_bytes), ("ram", self.ram_bytes), ("latency", self.latency_s)):
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ProfileError(f"{where}: {what} budget must be > 0, got {v!r}")
        if not self.precisions:
            raise ProfileError(f"{where}: precisions must name at least one of {', '.join(PRECISIONS)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ProfileError(f"{where}: unknown precision {bad[0]!r}; valid: {', '.join(PRECISIONS)}")
        missing = [p for p in self.precisions if p not in self.macs_per_s]
        if missing:
            raise ProfileError(f"{where}: macs_per_s has no figure for supported precision {missing[0]!r}")
        if any(not (math.isfinite(v) and v > 0) for v in self.macs_per_s.values()):
            raise ProfileError(f"{where}: macs_per_s figures must be > 0")
        if not self.macs_per_s_source.strip():
            raise ProfileError(f"{where}: macs_per_s_source must say where the throughput figure comes from")
        if not (isinstance(self.opset, int) and not isinstance(self.opset, bool) and 7 <= self.opset <= 30):
            raise ProfileError(f"{where}: opset must be an integer in 7..30, got {self.opset!r}")
        if not (isinstance(self.threads, int) and not isinstance(self.threads, bool) and 1 <= self.threads <= 256):
            raise ProfileError(f"{where}: threads must be an integer in 1..256, got {self.threads!r}")

    # -- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["precisions"] = list(self.precisions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceProfile:
        """Inverse of :meth:`to_dict` (numbers already in bytes/seconds/MAC/s)."""
        d = dict(d)
        d["precisions"] = tuple(d.get("precisions", ("fp32", "int8")))
        return cls(**d)

    @classmethod
    def from_toml(cls, data: dict[str, Any], *, name: str, source: str = "") -> DeviceProfile:
        """Build from a parsed TOML document with unit strings (see the module docstring).

        Raises:
            ProfileError: unknown keys, missing keys, unknown units, non-positive budgets.
        """
        where = f"device profile {source or name}"
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ProfileError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(_KEYS))}")
        missing = [k for k in ("flash", "ram", "latency", "macs_per_s", "macs_per_s_source") if k not in data]
        if missing:
            raise ProfileError(f"{where}: missing key {missing[0]!r}")
        version = data.get("version", PROFILE_VERSION)
        if version != PROFILE_VERSION:
            raise ProfileError(f"{where}: profile version {version!r} is not supported (expected {PROFILE_VERSION})")
        rates = data["macs_per_s"]
        if not isinstance(rates, dict):
            raise ProfileError(f'{where}: macs_per_s must be a table, e.g. [macs_per_s] fp32 = "1 GMAC/s"')
        bad = sorted(set(rates) - set(PRECISIONS))
        if bad:
            raise ProfileError(f"{where}: unknown precision {bad[0]!r} in macs_per_s; valid: {', '.join(PRECISIONS)}")
        precisions = data.get("precisions", ["fp32", "int8"])
        if not isinstance(precisions, list) or not all(isinstance(p, str) for p in precisions):
            raise ProfileError(f'{where}: precisions must be a list of strings, e.g. ["fp32", "int8"]')
        for key, typ in (("description", str), ("macs_per_s_source", str), ("notes", str), ("name", str)):
            if key in data and not isinstance(data[key], typ):
                raise ProfileError(f"{where}: {key} must be a string")
        if "ram_counts_weights" in data and not isinstance(data["ram_counts_weights"], bool):
            raise ProfileError(f"{where}: ram_counts_weights must be true or false")
        return cls(
            name=data.get("name", name),
            description=data.get("description", ""),
            flash_bytes=parse_bytes(data["flash"], "flash", where),
            ram_bytes=parse_bytes(data["ram"], "ram", where),
            latency_s=parse_seconds(data["latency"], "latency", where),
            macs_per_s={p: parse_rate(v, f"macs_per_s.{p}", where) for p, v in rates.items()},
            macs_per_s_source=data["macs_per_s_source"],
            precisions=tuple(precisions),
            opset=data.get("opset", 17),
            ram_counts_weights=data.get("ram_counts_weights", True),
            threads=data.get("threads", 1),
            notes=data.get("notes", ""),
            source=source,
        )

    # -- budgets -------------------------------------------------------------------------------------------------
    def supports(self, precision: str) -> bool:
        return precision in self.precisions

    def estimated_latency_ms(self, macs: float, precision: str) -> float:
        """MACs / the profile's sustained MAC/s for ``precision``, in ms (a rough estimate, not a measurement)."""
        if precision not in self.macs_per_s:
            raise ValueError(f"device {self.name!r} has no throughput figure for {precision!r}")
        return 1e3 * float(macs) / self.macs_per_s[precision]

    def check(self, measured: dict[str, Any]) -> list[BudgetCheck]:
        """Compare a measurement with every budget of this profile.

        Args:
            measured: as returned by :func:`edgeslice.deploy.budget.measure_model` or
                :func:`edgeslice.deploy.budget.measure_artifacts`: ``precision``, ``model_bytes`` (the model file),
                ``weight_bytes`` and ``peak_activation_bytes`` (RAM = their sum, or activations alone when
                ``ram_counts_weights`` is false; a precomputed ``ram_bytes`` is used when the parts are absent),
                ``macs`` (latency = MACs / macs_per_s[precision]) and optionally ``opset``.

        Returns:
            One :class:`BudgetCheck` per budget: precision, flash, ram, latency (and opset when measured).

        Raises:
            ValueError: a required measurement is missing.
        """
        for key in ("precision", "model_bytes", "macs"):
            if key not in measured:
                raise ValueError(f"measurement lacks {key!r}")
        precision = str(measured["precision"])
        checks = [
            BudgetCheck("precision", ", ".join(self.precisions), precision, precision in self.precisions, None, "")
        ]
        ram = self.ram_usage(measured)
        checks.append(_numeric("flash", self.flash_bytes, int(measured["model_bytes"]), "bytes"))
        checks.append(_numeric("ram", self.ram_bytes, ram, "bytes"))
        rate = self.macs_per_s.get(precision) or max(self.macs_per_s.values())
        checks.append(_numeric("latency", 1e3 * self.latency_s, 1e3 * float(measured["macs"]) / rate, "ms"))
        if measured.get("opset") is not None:
            checks.append(_numeric("opset", self.opset, int(measured["opset"]), "opset"))
        return checks

    def ram_usage(self, measured: dict[str, Any]) -> int:
        """RAM this profile counts for a measurement: peak activations (+ weights unless they stay in flash)."""
        if "peak_activation_bytes" in measured and "weight_bytes" in measured:
            weights = int(measured["weight_bytes"]) if self.ram_counts_weights else 0
            return weights + int(measured["peak_activation_bytes"])
        if "ram_bytes" in measured:
            return int(measured["ram_bytes"])
        raise ValueError("measurement lacks 'peak_activation_bytes'/'weight_bytes' (or 'ram_bytes')")


def _numeric(name: str, limit: float, value: float, unit: str) -> BudgetCheck:
    return BudgetCheck(name, limit, value, value <= limit, limit - value, unit)


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and validate a profile from a TOML file.

    Raises:
        ProfileError: the file is missing, is not valid TOML, or fails validation.
    """
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"device profile {path} not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"device profile {path} is not valid TOML: {e}") from e
    return DeviceProfile.from_toml(data, name=path.stem, source=str(path))


def profile_dirs() -> list[Path]:
    """Where bundled profiles are looked up: ``devices/`` of a source checkout, then the installed copy.

    A wheel installs ``devices/*.toml`` as data files under ``<prefix>/share/edgeslice/devices`` (see
    ``pyproject.toml``), so the repository keeps a single ``devices/`` folder at its root.
    """
    here = Path(__file__).resolve().parent
    candidates = [here.parents[1] / "devices", Path(sys.prefix) / "share" / "edgeslice" / "devices"]
    return [d for d in candidates if d.is_dir()]


def _bundled() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def list_devices() -> list[str]:
    """Names of the bundled device profiles, sorted."""
    return sorted(_bundled())


def get_device(name_or_path: str | Path) -> DeviceProfile:
    """A bundled profile by name, or a user profile by the path of its ``.toml`` file.

    Raises:
        ValueError: an unknown name (the message lists the valid ones) or an invalid profile.
    """
    s = str(name_or_path)
    if s.endswith(".toml") or "/" in s or "\\" in s:
        return load_profile(s)
    bundled = _bundled()
    if s not in bundled:
        raise ProfileError(f"unknown device {s!r}; valid: {', '.join(sorted(bundled))} (or a path to a .toml file)")
    return load_profile(bundled[s])


__all__ = [
    "BYTES_PER_ELEMENT",
    "PRECISIONS",
    "BudgetCheck",
    "DeviceProfile",
    "ProfileError",
    "format_bytes",
    "get_device",
    "list_devices",
    "load_profile",
    "parse_bytes",
    "parse_rate",
    "parse_seconds",
]
