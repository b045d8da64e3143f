"""``edgeslice.pipeline.increment``: the config refuses bad options before any work; the report prints the keys the
command printed before (the head's own keys only for that head). The command end to end: tests/ondevice, tests/device.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgeslice.errors import EdgesliceError
from edgeslice.pipeline.increment import IncrementConfig, IncrementReport
from edgeslice.pipeline.report import report_from_json, report_json


def test_config_needs_new_data_and_a_head_that_fits_the_options():
    with pytest.raises(EdgesliceError, match="--new-data is required"):
        IncrementConfig()
    with pytest.raises(EdgesliceError, match="--head must be one of"):
        IncrementConfig(new_data="digits", head="bogus")
    with pytest.raises(EdgesliceError, match="use them with --head trained"):
        IncrementConfig(new_data="digits", head="lda", isolate=True)
    with pytest.raises(EdgesliceError, match="--replay needs --head trained"):
        IncrementConfig(new_data="digits", head="routed", replay="digits")
    with pytest.raises(ValueError, match="replay-fraction"):
        IncrementConfig(new_data="digits", replay_fraction=0.0)
    config = IncrementConfig(new_data="digits", out=Path("o"), replay="digits")
    assert config.to_dict()["out"] == "o" and config.head == "auto"


def test_report_leaves_out_the_keys_of_other_heads():
    required = [f.name for f in dataclasses.fields(IncrementReport) if f.default is dataclasses.MISSING]
    report = IncrementReport(**{name: None for name in required})
    assert list(report_json(report)) == required  # the trained head: no head, router_seconds, class_stats, tasks
    routed = dataclasses.replace(report, head="routed", router_seconds=0.5, class_stats={"bytes": 1}, tasks=[[0], [1]])
    data = report_json(routed)
    assert list(data)[-4:] == ["head", "router_seconds", "class_stats", "tasks"]
    assert report_from_json(IncrementReport, data) == routed
