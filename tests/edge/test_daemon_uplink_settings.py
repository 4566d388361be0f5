"""The gateway's uplink settings reach the uplink and the outbox (edge/daemon.py ``_make_uplink``).

``uplink.body`` chooses the batch body (the outbox renders batches in it, the uplink labels them) and
``uplink.mqtt_alert_topic`` the MQTT alert lane, ``uplink.mqtt_alert_reprobe_min_s`` / ``_max_s`` its re-probe
periods (docs/gateway.md): a setting accepted by the config but not
passed on would do nothing, silently.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import parse_config
from edge.daemon import Gateway


def _gateway(tmp_path: Path, uplink: str) -> Gateway:
    (tmp_path / "token").write_text("vgw_test-token\n", encoding="utf-8")
    cfg = parse_config(
        f"""
[gateway]
id = "gw-test"
data_dir = "{tmp_path / "data"}"
credential_file = "{tmp_path / "token"}"

[uplink]
{uplink}

[metrics]
port = 0
""",
        tmp_path / "gateway.toml",
    )
    return Gateway(cfg)


@pytest.mark.parametrize("body", ["json", "msgpack"])
def test_http_uplink_and_outbox_use_the_configured_body(tmp_path: Path, body: str) -> None:
    gw = _gateway(tmp_path, f'mode = "http"\nurl = "http://127.0.0.1:9/"\nbody = "{body}"')
    try:
        assert gw.outbox.body_format == body
        assert gw.uplink is not None and gw.uplink.body == body  # type: ignore[attr-defined]
    finally:
        gw.outbox.close()


@pytest.mark.parametrize(("setting", "lane"), [("true", True), ("false", False)])
def test_mqtt_uplink_alert_lane_follows_the_setting(tmp_path: Path, setting: str, lane: bool) -> None:
    gw = _gateway(
        tmp_path,
        f'mode = "mqtt"\nurl = "mqtt://127.0.0.1:9"\nbody = "json"\nmqtt_alert_topic = {setting}',
    )
    try:
        assert gw.uplink is not None
        assert gw.uplink.alert_lane_enabled is lane  # type: ignore[attr-defined]
        assert gw.uplink.body == "json"  # type: ignore[attr-defined]
        assert gw.outbox.body_format == "json"
    finally:
        gw.outbox.close()


def test_mqtt_alert_lane_reprobe_settings_and_metrics_reach_the_uplink(tmp_path: Path) -> None:
    gw = _gateway(
        tmp_path,
        'mode = "mqtt"\nurl = "mqtt://127.0.0.1:9"\n'
        "mqtt_alert_reprobe_min_s = 45\nmqtt_alert_reprobe_max_s = 600",
    )
    try:
        lane = gw.uplink.lane  # type: ignore[union-attr]
        assert (lane.reprobe_min_s, lane.reprobe_max_s) == (45.0, 600.0)
        # the lane's state is exported by the daemon's own registry (what Prometheus scrapes)
        text = gw.metrics.render().decode()
        assert 'vigil_gateway_alert_lane_state{state="in_use"} 1.0' in text
    finally:
        gw.outbox.close()
