"""``edgeslice.pipeline.readapt``: the config validates its options and carries them into the repair settings. The
command end to end: tests/maintain/test_readapt.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeslice.pipeline.readapt import ReadaptConfig


def test_config_validates_and_builds_the_repair_settings():
    with pytest.raises(ValueError, match="unknown attack"):
        ReadaptConfig(model="m", checkpoint=Path("c"), index=Path("i"), attack="cw")
    with pytest.raises(ValueError, match="eps and lr must be > 0"):
        ReadaptConfig(model="m", checkpoint=Path("c"), index=Path("i"), eps=0.0)
    config = ReadaptConfig(model="m", checkpoint=Path("c"), index=Path("i"), attack="pgd", steps=3, samples=7, seed=2)
    settings = config.settings()
    assert settings.attack.kind == "pgd" and settings.attack.steps == 3
    assert settings.samples == 7 and settings.seed == 2 and config.to_dict()["checkpoint"] == "c"
