"""One way to turn a command's report into JSON and back.

Every command's ``run(config) -> <Command>Report`` returns a frozen dataclass; :func:`report_json` turns any of them
into the JSON document ``--json`` prints (field order kept, paths as strings, nested reports as objects), and
:func:`report_from_json` rebuilds one from that document (``edgeslice verify`` and tests read reports back).

A field declared ``field(default=..., metadata=NOT_IN_JSON)`` is left out of the document (and takes its default when
rebuilt): what a command's human tables or a Python caller need beyond what ``--json`` prints.
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

R = TypeVar("R")

#: ``dataclasses.field`` metadata of a report field that the JSON document leaves out.
NOT_IN_JSON = MappingProxyType({"json": False})


def _json_fields(cls: Any) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("json", True)]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in _json_fields(value)}
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
    """The JSON object of a report dataclass: its fields in order, paths as strings, tuples as lists.

    Raises:
        TypeError: ``report`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(report) or isinstance(report, type):
        raise TypeError(f"not a report: {type(report).__name__}")
    return _plain(report)


def report_from_json(cls: type[R], data: dict[str, Any]) -> R:
    """Rebuild a report of type ``cls`` from :func:`report_json`'s output (nested report dataclasses included).

    Raises:
        ValueError: ``data`` lacks a field of ``cls`` or has one ``cls`` does not know.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in _json_fields(cls)]
    unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
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


__all__ = ["NOT_IN_JSON", "report_from_json", "report_json"]
