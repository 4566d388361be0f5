"""Gateway configuration: validated TOML, errors that name the key path and the line (edge/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, load_config, parse_config
from vigil_cli import main

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
[gateway]
id = "gw-1"
credential = "s3cret"
data_dir = "data"

[[sources.serial]]
port = "/dev/ttyUSB0"

[[sources.serial]]
name = "nb"
port = "/dev/ttyAMA0"
baudrate = 9600
framing = "nbiot"

[uplink]
mode = "http"
url = "http://127.0.0.1:8000"
"""


def problems(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.toml")
    return info.value.problems


def test_minimal_config_defaults_and_names(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text(MINIMAL)
    cfg = load_config(f)
    assert cfg.gateway.data_dir == tmp_path / "data"  # relative paths resolve against the file
    assert [n for n, _ in cfg.source_names()] == ["serial:/dev/ttyUSB0", "nb"]
    assert cfg.sources.serial[0].baudrate == 115200 and cfg.sources.serial[1].framing == "nbiot"
    assert cfg.read_credential() == "s3cret"
    assert cfg.outbox.synchronous == "full"
    assert "s3cret" not in repr(cfg.gateway)  # secrets never in reprs (and so never in logs)


def test_example_configs_validate() -> None:
    for path in sorted((ROOT / "examples").glob("gateway*.toml")):
        load_config(path)


def test_misspelt_key_in_second_array_table_names_path_and_line() -> None:
    text = MINIMAL.replace("baudrate = 9600", "baudrat = 9600")
    [(key, line, msg)] = problems(text)
    assert key == "sources.serial[1].baudrat"
    assert line == text.splitlines().index("baudrat = 9600") + 1 == 12
    assert "Extra inputs" in msg


def test_bad_value_type_and_range() -> None:
    text = MINIMAL.replace('framing = "nbiot"', 'framing = "cobs"') + "\n[outbox]\nmax_age_s = -5\n"
    found = {k: line for k, line, _ in problems(text)}
    assert found["sources.serial[1].framing"] == 13
    assert found["outbox.max_age_s"] == len(text.splitlines())


def test_section_level_rule_points_at_the_section() -> None:
    text = MINIMAL.replace('url = "http://127.0.0.1:8000"', 'url = "ftp://x"')
    [(key, line, msg)] = problems(text)
    assert key == "uplink" and line == 15 and "http://" in msg


def test_missing_required_key_and_unknown_section() -> None:
    text = MINIMAL.replace('id = "gw-1"\n', "") + "\n[detecton]\nbatch_window_ms = 5\n"
    found = {k: line for k, line, _ in problems(text)}
    assert found["gateway.id"] == 1  # missing key: the line of its table
    assert found["detecton"] == len(text.splitlines()) - 1


def test_both_credentials_is_an_error() -> None:
    text = MINIMAL.replace('credential = "s3cret"', 'credential = "a"\ncredential_file = "b"')
    [(key, line, msg)] = problems(text)
    assert key == "gateway" and line == 1 and "not both" in msg


def test_action_needs_its_fields() -> None:
    text = MINIMAL + '\n[[actions]]\nname = "sms"\ntype = "sms"\nport = "/dev/ttyUSB2"\n'
    [(key, line, msg)] = problems(text)
    assert key == "actions[0]" and line == text.splitlines().index("[[actions]]") + 1 and "numbers" in msg


def test_toml_syntax_error_has_line() -> None:
    [(key, line, _msg)] = problems(MINIMAL + "\nport = = 3\n")
    assert key == "(syntax)" and line == len(MINIMAL.splitlines()) + 2


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/gw.toml")


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("baudrate = 9600", "baudrat = 9600"))
    assert main(["gateway", "check-config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["gateway", "check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "line 12" in err and "sources.serial[1].baudrat" in err


def test_check_config_reads_the_device_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "devices.csv").write_text(
        "device_id,kind,dev_addr,nwk_skey,app_skey\n70b3d57ed0000001,manhole,,,\n70b3d57ed0000002,toaster,,,\n"
    )
    f = tmp_path / "gw.toml"
    f.write_text(MINIMAL.replace('data_dir = "data"', 'data_dir = "data"\ndevices_file = "devices.csv"'))
    assert main(["gateway", "check-config", str(f)]) == 1
    assert "devices.csv:3: invalid row" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("gateway.credential_file", 'credential_file = "gateway.credential"'),
        ("gateway.devices_file", 'devices_file = "devices.csv"'),
        ("detection.profiles_file", None),
        ("clock.file", None),
    ],
)
def test_check_config_fails_when_a_file_the_daemon_opens_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, line: str | None
) -> None:
    text = MINIMAL
    if key == "gateway.credential_file":
        text = text.replace('credential = "s3cret"', line or "")
    elif line is not None:
        text = text.replace('data_dir = "data"', f'data_dir = "data"\n{line}')
    elif key == "detection.profiles_file":
        text += '\n[detection]\nprofiles_file = "profiles.toml"\n'
    else:
        text += '\n[clock]\nfile = "sim/clock.json"\n'
    f = tmp_path / "gw.toml"
    f.write_text(text)
    assert main(["gateway", "check-config", str(f)]) == 1
    err = capsys.readouterr().err
    assert f"{key}: cannot open" in err and "fix the path" in err


def test_check_config_gbk_device_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Excel on Chinese Windows saves "CSV (comma delimited)" as GBK
    (tmp_path / "devices.csv").write_bytes(
        "device_id,kind,name,address\n70b3d57ed0000001,manhole,井盖1,海淀区中关村大街1号\n".encode("gbk")
    )
    f = tmp_path / "gw.toml"
    f.write_text(MINIMAL.replace('data_dir = "data"', 'data_dir = "data"\ndevices_file = "devices.csv"'))
    assert main(["gateway", "check-config", str(f)]) == 0
    assert "1 devices" in capsys.readouterr().out


def test_gateway_without_config_explains(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway"]) == 2
    assert "--config FILE is required" in capsys.readouterr().err


def test_top_level_devices_file(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text('devices_file = "devices.csv"\n' + MINIMAL)
    assert load_config(f).gateway.devices_file == tmp_path / "devices.csv"
    text = 'devices_file = "a.csv"\n' + MINIMAL.replace(
        'data_dir = "data"', 'data_dir = "data"\ndevices_file = "b.csv"'
    )
    [(key, _line, msg)] = problems(text)
    assert key == "(top level)" and "not both" in msg
