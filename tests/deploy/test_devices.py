"""Device profiles: the bundled TOMLs, unit parsing, validation, and budget checks against hand-made numbers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgeslice.cli import app
from edgeslice.deploy.devices import (
    DeviceProfile,
    ProfileError,
    get_device,
    list_devices,
    load_profile,
    parse_bytes,
    parse_rate,
    parse_seconds,
)
from edgeslice.errors import EdgesliceError

GOOD = """
name = "toy"
flash = "2 MiB"
ram = "512 KiB"
latency = "50 ms"
precisions = ["fp32", "int8"]
opset = 13
ram_counts_weights = true
macs_per_s_source = "made up for a test"

[macs_per_s]
fp32 = "100 MMAC/s"
int8 = "0.2 GMAC/s"
"""


def _write(tmp_path, text: str, name: str = "toy.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_bundled_profiles_load():
    names = list_devices()
    assert {"rpi4", "rpi-zero-2w", "jetson-nano", "stm32h7", "esp32-s3"} <= set(names)
    for name in names:
        p = get_device(name)
        assert p.name == name
        assert p.flash_bytes > 0 and p.ram_bytes > 0 and p.latency_s > 0
        assert "not measured by edgeslice" in p.macs_per_s_source  # the figure's honesty note
        assert set(p.precisions) <= set(p.macs_per_s)
    assert get_device("esp32-s3").precisions == ("int8",)
    assert get_device("rpi4").threads == 4 and get_device("stm32h7").threads == 1
    assert get_device("stm32h7").flash_bytes == 1536 * 1024 and not get_device("stm32h7").ram_counts_weights


def test_unknown_device_lists_valid_names():
    with pytest.raises(ValueError, match="unknown device 'nope'.*rpi4"):
        get_device("nope")


@pytest.mark.parametrize(
    ("text", "value"),
    [("512 KiB", 524288), ("2 MiB", 2 * 1024**2), ("1.5 MB", 1_500_000), ("3 B", 3), ("1e3 kB", 10**6)],
)
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


def test_parse_time_and_rate():
    assert parse_seconds("50 ms") == pytest.approx(0.05)
    assert parse_seconds("250 us") == pytest.approx(250e-6)
    assert parse_rate("1.5 GMAC/s") == pytest.approx(1.5e9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2 megabytes", "unknown unit 'megabytes'"),
        ("2", "cannot read"),
        ("-2 MiB", "must be > 0"),
        ("0 KiB", "must be > 0"),
        (2048, "must be a string with a unit"),
    ],
)
def test_parse_bytes_rejects(text, message):
    with pytest.raises(ProfileError, match=message):
        parse_bytes(text)


def test_load_good_profile_and_round_trip(tmp_path):
    p = load_profile(_write(tmp_path, GOOD))
    assert (p.flash_bytes, p.ram_bytes, p.latency_s, p.opset) == (2 * 1024**2, 512 * 1024, 0.05, 13)
    assert p.macs_per_s == {"fp32": 1e8, "int8": 2e8}
    assert p.threads == 1  # absent: one thread
    assert DeviceProfile.from_dict(p.to_dict()) == p
    assert load_profile(_write(tmp_path, GOOD.replace("opset = 13", "opset = 13\nthreads = 4"), "4.toml")).threads == 4
    assert get_device(str(tmp_path / "toy.toml")) == p  # a path works wherever a name does


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("opset = 13", 'opset = 13\nflsh = "1 MiB"', "unknown key 'flsh'"),
        ('ram = "512 KiB"', 'ram = "512 KB/s"', "unknown unit 'KB/s'"),
        ('ram = "512 KiB"', 'ram = "512 kibibytes"', "unknown unit"),
        ('latency = "50 ms"', 'latency = "-50 ms"', "latency must be > 0"),
        ('flash = "2 MiB"', 'flash = "-1 MiB"', "flash must be > 0"),
        ('latency = "50 ms"', 'latency = "50 fortnights"', "unknown unit 'fortnights'"),
        ('int8 = "0.2 GMAC/s"', 'int8 = "0.2 GFLOPS"', "unknown unit 'GFLOPS'"),
        ('int8 = "0.2 GMAC/s"', "", "no figure for supported precision 'int8'"),
        ('precisions = ["fp32", "int8"]', 'precisions = ["fp16"]', "unknown precision 'fp16'"),
        ('flash = "2 MiB"\n', "", "missing key 'flash'"),
        ("opset = 13", 'opset = "13"', "opset must be an integer"),
        ('macs_per_s_source = "made up for a test"', 'macs_per_s_source = " "', "macs_per_s_source must say"),
        ("opset = 13", "opset = 13\nthreads = 0", "threads must be an integer in 1..256"),
        ("opset = 13", 'opset = 13\nthreads = "4"', "threads must be an integer"),
        ("opset = 13", "opset = 13\nthreads = true", "threads must be an integer"),
    ],
)
def test_invalid_profiles(tmp_path, old, new, message):
    assert old in GOOD
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(_write(tmp_path, GOOD.replace(old, new)))
    assert isinstance(info.value, ValueError) and isinstance(info.value, EdgesliceError)
    assert "\n" not in str(info.value)


def test_not_toml(tmp_path):
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(_write(tmp_path, "flash = 2 MiB"))
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "missing.toml")


def test_check_against_hand_computed_numbers(tmp_path):
    p = load_profile(_write(tmp_path, GOOD))
    measured = {
        "precision": "fp32",
        "model_bytes": 3 * 1024**2,  # 1 MiB over the 2 MiB flash budget
        "weight_bytes": 400 * 1024,
        "peak_activation_bytes": 100 * 1024,  # RAM = 500 KiB of 512 KiB
        "macs": 4_000_000,  # 4e6 / 1e8 MAC/s = 40 ms of 50 ms
        "opset": 13,
    }
    checks = {c.name: c for c in p.check(measured)}
    assert set(checks) == {"precision", "flash", "ram", "latency", "opset"}
    assert not checks["flash"].ok and checks["flash"].margin == -(1024**2)
    assert "over by 1.0 MiB" in checks["flash"].describe()
    assert checks["ram"].ok and checks["ram"].value == 500 * 1024 and checks["ram"].margin == 12 * 1024
    assert checks["latency"].ok and checks["latency"].value == pytest.approx(40.0)
    assert checks["latency"].margin == pytest.approx(10.0)
    # int8 runs at the profile's int8 rate: 4e6 / 2e8 = 20 ms.
    assert {c.name: c for c in p.check({**measured, "precision": "int8"})}["latency"].value == pytest.approx(20.0)
    # An opset newer than the runtime takes fails; an unsupported precision fails.
    assert not {c.name: c for c in p.check({**measured, "opset": 17})}["opset"].ok
    mcu = load_profile(
        _write(
            tmp_path,
            GOOD.replace('precisions = ["fp32", "int8"]', 'precisions = ["int8"]').replace(
                "ram_counts_weights = true", "ram_counts_weights = false"
            ),
            "mcu.toml",
        )
    )
    mc = {c.name: c for c in mcu.check(measured)}
    assert not mc["precision"].ok
    assert mc["ram"].value == 100 * 1024  # weights stay in flash


runner = CliRunner()


def test_cli_list_and_show(tmp_path):
    r = runner.invoke(app, ["devices", "list"])
    assert r.exit_code == 0 and "rpi-zero-2w" in r.stdout and "stm32h7" in r.stdout
    r = runner.invoke(app, ["devices", "list", "--json"])
    assert {d["name"] for d in json.loads(r.stdout)} >= {"rpi4", "esp32-s3"}
    r = runner.invoke(app, ["devices", "show", "jetson-nano", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["precisions"] == ["fp32"]
    r = runner.invoke(app, ["devices", "show", "rpi4"])
    assert r.exit_code == 0 and "throughput source" in r.stdout
    r = runner.invoke(app, ["devices", "show", str(_write(tmp_path, GOOD))])
    assert r.exit_code == 0 and "toy" in r.stdout


@pytest.mark.parametrize(
    ("arg", "message"),
    [("nope", "unknown device 'nope'"), ("bad.toml", "unknown unit 'parsecs'")],
)
def test_cli_show_errors(tmp_path, arg, message):
    _write(tmp_path, GOOD.replace('"50 ms"', '"50 parsecs"'), "bad.toml")
    r = runner.invoke(app, ["devices", "show", str(tmp_path / arg) if arg.endswith(".toml") else arg])
    assert r.exit_code == 1
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr + r.stdout
