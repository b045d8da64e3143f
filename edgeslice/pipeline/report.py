"""One way to turn a command's report into JSON and back.

Every command's ``run(config) -> <Command>Report`` returns a frozen dataclass; :func:`report_json` turns any of them
into the JSON document ``--json`` prints (field order kept, paths as strings, nested reports as objects), and
:func:`report_from_json` rebuilds one from that document (``edgeslice verify`` and tests read reports back).

Three field markers, for reports whose JSON is not one key per field: ``field(metadata=HIDDEN)`` is a value only the
human output or a Python caller needs (``--json`` leaves it out; it needs a default); ``field(metadata=INLINE)`` is a
dict whose keys ``--json`` prints at the report's own level (``edgeslice run`` prints compress's open-ended report
plus its own keys); :func:`optional` is a key a command prints only in some cases (absent while None).
"""

from __future__ import annotations

import dataclasses
import typing
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

R = TypeVar("R")

#: Field metadata: the field is not part of the JSON document.
HIDDEN: dict[str, str] = {"json": "hidden"}
#: Field metadata: the field is a dict whose keys the JSON document holds at the report's own level.
INLINE: dict[str, str] = {"json": "inline"}
#: Field metadata: the field is left out of the JSON document while its value is None.
OMIT_IF_NONE: dict[str, str] = {"json": "optional"}


def optional() -> Any:
    """A report field that is None by default and absent from the JSON document while None (a key that a command
    prints only in some cases, e.g. ``increment``'s ``tasks`` for the routed head alone)."""
    return dataclasses.field(default=None, metadata=OMIT_IF_NONE)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        doc: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            how, item = f.metadata.get("json"), getattr(value, f.name)
            if how == "inline":
                doc.update(_plain(item))
            elif how != "hidden" and not (how == "optional" and item is None):
                doc[f.name] = _plain(item)
        return doc
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
        ValueError: ``data`` lacks a field of ``cls`` (other than an :func:`optional` one) or has one ``cls`` does
            not know.
    """
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.metadata.get("json") != "hidden"]  # type: ignore[arg-type]
    inline = [f.name for f in fields if f.metadata.get("json") == "inline"]
    known = [f.name for f in fields if f.name not in inline]
    if inline:  # the keys no other field names are the inline dict's
        data = {
            **{k: v for k, v in data.items() if k in known},
            inline[0]: {k: v for k, v in data.items() if k not in known},
        }
        known.append(inline[0])
    optional_names = {f.name for f in fields if f.metadata.get("json") == "optional"}
    names = [n for n in known if n in data or n not in optional_names]
    unknown, missing = sorted(set(data) - set(known)), [n for n in names if n not in data]
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


__all__ = ["HIDDEN", "INLINE", "OMIT_IF_NONE", "optional", "report_from_json", "report_json"]
