"""The pipeline's merge window keys in ``[detection]`` (edge/config.py): defaults, errors naming the key."""

from __future__ import annotations

import pytest

from edge.config import ConfigError, parse_config

BASE = """\
[gateway]
id = "gw-1"
data_dir = "data"

[uplink]
mode = "none"
"""


def test_urgent_flush_defaults_on_and_can_be_turned_off() -> None:
    cfg = parse_config(BASE, "gw.toml")
    assert cfg.detection.urgent_flush is True and cfg.detection.batch_window_ms == 50.0
    assert cfg.detection.urgent_gap_ms == 20.0
    off = parse_config(BASE + "\n[detection]\nurgent_flush = false\nbatch_window_ms = 100\n", "gw.toml")
    assert off.detection.urgent_flush is False and off.detection.batch_window_ms == 100.0


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('urgent_flush = "sometimes"', "detection.urgent_flush"),
        ("urgent_gap_ms = -1", "detection.urgent_gap_ms"),
        ("batch_window_ms = 0", "detection.batch_window_ms"),
        ("batch_window_ms = 20000", "detection.batch_window_ms"),
    ],
)
def test_a_bad_merge_window_value_names_its_key_and_line(line: str, key: str) -> None:
    text = BASE + "\n[detection]\n" + line + "\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "gw.toml")
    [(got, at, _msg)] = info.value.problems
    assert got == key and at == len(text.splitlines())
