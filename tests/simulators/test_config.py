"""Fleet TOML validation: a bad key gets an error naming it (and its line); examples stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulators.config import load_config, parse_config
from simulators.errors import ConfigError
from simulators.timeutil import parse_duration, parse_instant

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["fleet-small.toml", "fleet-10k.toml"])
def test_examples_are_valid(name: str) -> None:
    cfg = load_config(ROOT / "examples" / name)
    assert sum(cfg.devices.counts().values()) > 0


def test_10k_example_is_10k() -> None:
    assert sum(load_config(ROOT / "examples" / "fleet-10k.toml").devices.counts().values()) >= 10_000


def test_unknown_key_is_named_with_its_line(tmp_path: Path) -> None:
    p = tmp_path / "f.toml"
    p.write_text("seed = 1\n\n[devices]\nmanhole = 3\nwristbnd = 2\n")
    with pytest.raises(ConfigError, match=r"f\.toml:5: devices\.wristbnd: unknown key"):
        load_config(p)


def test_unknown_effect_is_named(tmp_path: Path) -> None:
    p = tmp_path / "f.toml"
    p.write_text("[scenarios.smoke_alarm]\nfire = 0.1\ncooknig = 2\n")
    with pytest.raises(ConfigError, match=r"f\.toml:3: scenarios\.smoke_alarm\.cooknig: unknown effect"):
        load_config(p)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[faults]\ncorrupt = 2.0\n", "faults.corrupt"),
        ("speedup = -1\n", "speedup"),
        ("[outputs.serial]\nformat = 'hdlc'\n", "outputs.serial.format"),
        ("version = 2\n", "version"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, text: str, key: str) -> None:
    p = tmp_path / "f.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(p)


def test_not_toml_and_missing(tmp_path: Path) -> None:
    p = tmp_path / "f.toml"
    p.write_text("seed = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_durations_instants_and_overrides() -> None:
    assert parse_duration("90s") == 90 and parse_duration("30m") == 1800 and parse_duration("2h") == 7200
    assert parse_duration("1.5d") == 1.5 * 86400 and parse_duration(5) == 5.0
    with pytest.raises(ValueError):
        parse_duration("2 fortnights")
    assert (
        parse_instant("2026-06-01T08:00:00+08:00") == parse_instant("2026-06-01T00:00:00Z") == 1_780_272_000.0
    )
    cfg = parse_config({"duration": "2h", "start": "2026-06-01T00:00:00Z"}, duration_s=60.0, seed=9)
    assert (cfg.duration_s, cfg.seed, cfg.start) == (60.0, 9, 1_780_272_000.0)
