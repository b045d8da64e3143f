"""The one report ↔ JSON conversion every command uses (``edgeslice.pipeline.report``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeslice.pipeline.report import HIDDEN, INLINE, optional, report_from_json, report_json
from edgeslice.pipeline.train import TrainReport


@dataclass(frozen=True)
class _Inner:
    path: Path
    sizes: tuple[int, ...]


@dataclass(frozen=True)
class _Outer:
    name: str
    inner: _Inner
    extra: dict[str, float]


def test_report_json_keeps_field_order_and_round_trips_through_text():
    report = TrainReport("out/model.safetensors", "m", "digits", 91.5, 2.25, 1234, "abc")
    data = report_json(report)
    assert list(data) == ["checkpoint", "model", "data", "test_accuracy", "train_seconds", "params", "fingerprint"]
    assert report_from_json(TrainReport, json.loads(json.dumps(data))) == report


def test_nested_reports_paths_and_tuples_become_plain_json_and_come_back():
    report = _Outer("x", _Inner(Path("a/b.onnx"), (1, 2)), {"acc": 0.5})
    data = report_json(report)
    assert data == {"name": "x", "inner": {"path": "a/b.onnx", "sizes": [1, 2]}, "extra": {"acc": 0.5}}
    back = report_from_json(_Outer, json.loads(json.dumps(data)))
    assert back.inner.path == Path("a/b.onnx") and back.name == "x" and back.extra == {"acc": 0.5}


def test_report_from_json_names_unknown_and_missing_fields():
    with pytest.raises(ValueError, match=r"unknown fields \['bogus'\], missing fields \['fingerprint'\]"):
        report_from_json(TrainReport, {**{k: 0 for k in ("checkpoint", "model", "data", "test_accuracy",
                                                          "train_seconds", "params")}, "bogus": 1})  # fmt: skip
    with pytest.raises(TypeError, match="not a report"):
        report_json({"a": 1})


@dataclass(frozen=True)
class _WithDetail:
    name: str
    detail: dict[str, int] = field(default_factory=dict, compare=False, metadata=HIDDEN)


def test_a_field_marked_not_in_json_is_left_out_and_takes_its_default_back():
    report = _WithDetail("x", {"rows": 3})
    assert report_json(report) == {"name": "x"}
    back = report_from_json(_WithDetail, report_json(report))
    assert back.name == "x" and back.detail == {}


@dataclass(frozen=True)
class _Sometimes:
    always: int | None
    sometimes: str | None = optional()


def test_an_optional_field_is_left_out_while_none_and_comes_back_as_none():
    assert report_json(_Sometimes(None)) == {"always": None}  # a plain None field stays: only optional() ones go
    assert report_json(_Sometimes(1, "x")) == {"always": 1, "sometimes": "x"}
    assert report_from_json(_Sometimes, {"always": 2}) == _Sometimes(2)
    assert report_from_json(_Sometimes, {"always": 2, "sometimes": "y"}) == _Sometimes(2, "y")
    with pytest.raises(ValueError, match=r"missing fields \['always'\]"):
        report_from_json(_Sometimes, {"sometimes": "y"})


@dataclass(frozen=True)
class _Inner2:
    a: int
    out: str | None = optional()


@dataclass(frozen=True)
class _Outer2:
    inner: _Inner2 = field(metadata=INLINE)
    out: str = ""


def test_an_inline_report_prints_at_the_top_level_and_comes_back_typed():
    report = _Outer2(_Inner2(1), out="folder")
    doc = report_json(report)
    assert doc == {"a": 1, "out": "folder"}  # the inner report's unset optional out gives way to the outer one
    assert report_from_json(_Outer2, doc) == report
