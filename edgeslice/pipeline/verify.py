"""``edgeslice verify``: re-check an artifact folder (hashes, checkpoint, ONNX parity, index, device budgets).

The checks are :func:`edgeslice.artifacts.verify.verify`'s; this module gives the command its config and report.

config = VerifyConfig(folder=Path("edgeslice-out/mobilenetv3_small_100"))
report = run(config)
print(report.ok, [c.name for c in report.failed])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..artifacts.verify import RUNTIMES, Check


@dataclass(frozen=True)
class VerifyConfig:
    """What ``edgeslice verify`` does, as one validated value (the command's options, same names)."""

    folder: Path
    runtime: str = "onnxruntime"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; valid: {', '.join(RUNTIMES)}")

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class VerifyReport:
    """Every check of one folder (``--json`` prints these fields); ``ok`` when none failed."""

    folder: str
    ok: bool
    runtime: dict[str, Any]
    checks: list[Check]

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def run(config: VerifyConfig) -> VerifyReport:
    """Run every check on ``config.folder``; it writes nothing (so there is no ``out`` to claim and no device).

    Raises:
        EdgesliceError: the folder has no readable manifest, or the runtime is not installed.
    """
    from ..artifacts.verify import verify

    result = verify(config.folder, runtime=config.runtime)
    return VerifyReport(folder=result.folder, ok=result.ok, runtime=result.runtime, checks=list(result.checks))


__all__ = ["VerifyConfig", "VerifyReport", "run"]
