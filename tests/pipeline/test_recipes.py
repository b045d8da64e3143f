"""Recipes: shipped files, lookup, ``--set`` overrides with TOML scalar rules, errors, the effective-config writer."""

from __future__ import annotations

import json

import pytest
import tomllib
from typer.testing import CliRunner

from edgeslice.cli import app
from edgeslice.pipeline import CompressConfig
from edgeslice.pipeline.recipes import (
    apply_overrides,
    config_from_dict,
    config_to_toml,
    find_recipe,
    list_recipes,
    load_recipe,
    parse_override,
    read_recipe,
)

runner = CliRunner()
DEVICES = ("rpi4", "rpi-zero-2w", "jetson-nano", "stm32h7", "esp32-s3")


def test_shipped_recipes_load():
    names = list_recipes()
    assert "mobilenetv3-fashion-mnist" in names
    headline = load_recipe("mobilenetv3-fashion-mnist")
    assert headline.model == "mobilenetv3" and headline.data == "fashion-mnist" and headline.device is None
    assert headline.slicing.theta == 0.95 and headline.slicing.metric == "taylor"
    assert headline.slicing.strategy == "semantic" and headline.quantize == "none"
    for name in names:
        cfg = load_recipe(name)
        assert read_recipe(find_recipe(name))[1]["description"]
        # Written back as TOML, every recipe loads to the same configuration.
        assert config_from_dict(tomllib.loads(config_to_toml(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("device", DEVICES)
def test_one_recipe_per_device(device):
    cfg = load_recipe(f"mobilenetv3-fashion-mnist-{device}")
    assert cfg.device == device
    devices = pytest.importorskip("edgeslice.deploy.devices")
    profile = devices.get_device(device)
    assert ("int8" if cfg.quantize == "int8" else "fp32") in profile.precisions


def test_find_recipe_by_name_path_and_env(tmp_path, monkeypatch):
    shipped = find_recipe("mobilenetv3-fashion-mnist")
    assert shipped.name == "mobilenetv3-fashion-mnist.toml"
    assert find_recipe("mobilenetv3-fashion-mnist.toml") == shipped
    assert find_recipe(str(shipped)) == shipped
    own = tmp_path / "mine.toml"
    own.write_text('model = "mlp"\n')
    monkeypatch.setenv("EDGESLICE_RECIPES", str(tmp_path))
    assert "mine" in list_recipes() and find_recipe("mine") == own
    with pytest.raises(ValueError, match="unknown recipe 'nope'.*mobilenetv3-fashion-mnist"):
        find_recipe("nope")


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("slicing.theta=0.9", (["slicing", "theta"], 0.9)),
        ("seed=3", (["seed"], 3)),
        ("download=true", (["download"], True)),
        ('data="digits"', (["data"], "digits")),
        ("model=mobilenetv3", (["model"], "mobilenetv3")),  # not TOML: a bare string
        ("lr = 1e-3", (["lr"], 0.001)),
        ("data=/some/folder", (["data"], "/some/folder")),
    ],
)
def test_parse_override_follows_toml_scalars(item, expected):
    assert parse_override(item) == expected


def test_overrides_reach_nested_tables():
    cfg = config_from_dict(
        apply_overrides(
            {"model": "mlp", "slicing": {"theta": 0.95}},
            ["slicing.theta=0.9", "pruning.pruner=lamp", "train_epochs=2", "seed=7"],
        )
    )
    assert cfg.slicing.theta == 0.9 and cfg.pruning.pruner == "lamp" and cfg.seed == 7
    assert cfg.train_epochs == 2.0 and isinstance(cfg.train_epochs, float)  # TOML integer, float field
    assert cfg == CompressConfig.from_dict(cfg.to_dict())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["slicing.nope=1"], "unknown setting 'slicing.nope'; valid: slicing.baseline"),
        (["nope=1"], "unknown setting 'nope'"),
        (["model.x=1"], "'model' is not a table"),
        (["slicing.theta=high"], "'slicing.theta' must be a number"),
        (["seed=1.5"], "'seed' must be an integer"),
        (["download=1"], "'download' must be true/false"),
        (["slicing.theta=2"], "theta must be in (0, 1]"),
        (["theta"], "not key=value"),
        (["seed=[1, 2]"], "only scalar values"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ValueError) as e:
        config_from_dict(apply_overrides({}, overrides))
    assert message in str(e.value)


def test_bad_recipe_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("model = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_recipe(bad)
    bad.write_text('model = "mlp"\ncolour = "red"\n')
    with pytest.raises(ValueError, match="bad.toml: unknown compress settings: colour"):
        load_recipe(bad)
    bad.write_text('[slicing]\ntheta = "high"\n')
    with pytest.raises(ValueError, match="'slicing.theta' must be a number"):
        load_recipe(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mobilenetv3-fashion-mnist", "--set", "slicing.nope=1"], "unknown setting 'slicing.nope'"),
        (["mobilenetv3-fashion-mnist", "--set", "slicing.theta=1.5"], "theta must be in (0, 1]"),
        (["no-such-recipe"], "unknown recipe 'no-such-recipe'"),
        (["mobilenetv3-fashion-mnist", "--set", "theta"], "not key=value"),
        (["mobilenetv3-fashion-mnist", "--set", "data=/no/such/folder"], "not found"),  # fails inside compress
    ],
)
def test_run_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "out"
    r = runner.invoke(app, ["run", *args, "--out", str(out), "--device-type", "cpu"])
    assert r.exit_code == 1
    errors = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("[edgeslice] ")]  # progress aside
    assert message in r.stderr and len(errors) == 1
    assert "Traceback" not in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_run_list_and_usage():
    r = runner.invoke(app, ["run", "--list", "--json"])
    assert r.exit_code == 0
    names = [row["name"] for row in json.loads(r.stdout)]
    assert names == list_recipes()
    assert {row["device"] for row in json.loads(r.stdout)} == {None, *DEVICES}
    assert runner.invoke(app, ["run"]).exit_code == 2
