"""``edgeslice.pipeline.prune``: the command's config is validated, its report prints what ``--json`` printed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgeslice.pipeline.prune import PruneConfig, PruneReport
from edgeslice.pipeline.report import report_from_json, report_json


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prune_step": 1.0}, "prune_step"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"pruner": "nope"}, "nope"),
        ({"batch_size": 0}, "batch-size"),
        ({"dense_params": 0}, "dense-params"),
    ],
)
def test_bad_options_name_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(model="mlp", checkpoint=Path("ck/model.safetensors"), **options)


def test_config_gives_the_loop_its_settings():
    config = PruneConfig(model="mlp", checkpoint=Path("ck"), pruner="erk", prune_step=0.4, finetune_steps=3)
    assert config.pruning.to_dict()["pruner"] == "erk" and config.pruning.prune_step == 0.4
    assert config.to_dict()["checkpoint"] == "ck"


def test_report_json_leaves_the_data_name_out_and_reads_back():
    values = {f.name: 0 for f in dataclasses.fields(PruneReport) if f.name != "data_name"}
    report = PruneReport(**values, data_name="digits")
    doc = report_json(report)
    assert list(doc) == [f.name for f in dataclasses.fields(PruneReport)][:-1]
    assert "data_name" not in doc
    assert report_from_json(PruneReport, doc) == dataclasses.replace(report, data_name="")


def test_an_inline_dict_is_printed_at_the_reports_level():
    from edgeslice.pipeline.report import INLINE

    wrapped = dataclasses.make_dataclass(
        "W", [("inner", dict, dataclasses.field(metadata=INLINE)), ("out", str)], frozen=True
    )
    report = wrapped(inner={"a": 1, "out": "old"}, out="new")
    assert report_json(report) == {"a": 1, "out": "new"}
    assert report_from_json(wrapped, {"a": 1, "out": "new"}) == wrapped(inner={"a": 1}, out="new")
