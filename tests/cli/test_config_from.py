"""``cli._common.config_from``: a command's parsed options → its frozen config, field by field."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from edgeslice.cli._common import config_from


class _Mode(Enum):
    fast = "fast"


@dataclass(frozen=True)
class _Config:
    name: str
    checkpoint: str | None = None
    out: Path = Path("default")
    cache: Path | None = None
    mode: str = "slow"
    epochs: float = 1.0


def test_options_fill_same_named_fields_with_enum_values_and_path_strings_where_the_field_is_a_str():
    options = {"name": "m", "checkpoint": Path("a/b.pt"), "out": Path("o"), "cache": Path("c"), "mode": _Mode.fast,
               "json_out": True, "epochs": 3.0}  # fmt: skip
    config = config_from(_Config, options)
    assert config == _Config("m", "a/b.pt", Path("o"), Path("c"), "fast", 3.0)
    assert isinstance(config.out, Path) and isinstance(config.cache, Path)


def test_given_values_win_and_unnamed_fields_keep_their_defaults():
    config = config_from(_Config, {"name": "m", "epochs": 3.0}, epochs=5.0)
    assert config == _Config("m", epochs=5.0)
