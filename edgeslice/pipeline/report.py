"""One way to turn a command's report into JSON and back.

Every command's ``run(config) -> <Command>Report`` returns a frozen dataclass; :func:`report_json` turns any of them
into the JSON document ``--json`` prints (field order kept, paths as strings, nested reports as objects), and
:func:`report_from_json` rebuilds one from that document (``edgeslice verify`` and tests read reports back).
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

R = TypeVar("R")

#: Field metadata of a key a report holds only sometimes: left out of the JSON document while its value is None.
OMIT_IF_NONE = "edgeslice.omit_if_none"


def optional() -> Any:
    """A report field that is None by default and absent from the JSON document while None (a key that a command
    prints only in some cases, e.g. ``increment``'s ``tasks`` for the routed head alone)."""
    return dataclasses.field(default=None, metadata={OMIT_IF_NONE: True})


def _omitted(f: dataclasses.Field, value: Any) -> bool:
    return value is None and bool(f.metadata.get(OMIT_IF_NONE))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not _omitted(f, getattr(value, f.name))
        }
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def report_json(report: Any) -> dict[str, Any]:
    """The JSON object of a report dataclass: its fields in order, paths as strings, tuples as lists; an
    :func:`optional` field only when it is not None.

    Raises:
        TypeError: ``report`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(report) or isinstance(report, type):
        raise TypeError(f"not a report: {type(report).__name__}")
    return _plain(report)


def report_from_json(cls: type[R], data: dict[str, Any]) -> R:
    """Rebuild a report of type ``cls`` from :func:`report_json`'s output (nested report dataclasses included).

    Raises:
        ValueError: ``data`` lacks a field of ``cls`` (other than an :func:`optional` one) or has one ``cls`` does
            not know.
    """
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = [f.name for f in fields if f.name in data or not f.metadata.get(OMIT_IF_NONE)]
    unknown = sorted(set(data) - {f.name for f in fields})
    missing = [n for n in names if n not in data]
    if unknown or missing:
        raise ValueError(f"{cls.__name__}: unknown fields {unknown}, missing fields {missing}")
    values = {}
    for name in names:
        kind, value = hints[name], data[name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = report_from_json(kind, value)
        elif kind is Path and isinstance(value, str):
            value = Path(value)
        values[name] = value
    return cls(**values)


__all__ = ["OMIT_IF_NONE", "optional", "report_from_json", "report_json"]
