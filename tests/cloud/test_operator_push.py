"""CTWing and OneNET HTTP push endpoints.

Message shapes follow the platforms' documented pushes as coded in ``firmware_bridge/operator_push.py``
(CTWing AEP "北向 HTTP 订阅推送" dataReport with ``payload.APPdata``; OneNET "数据推送" with
``signature = Base64(MD5(token + nonce + msg))``, REFERENCES.md "China Telecom CTWing / China Mobile OneNET").
The signature in these tests is computed independently with hashlib, not with the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import json

from firmware_bridge.kernel.records import DeviceKind, Reading
from firmware_bridge.operator_push import build_ctwing_data_report, build_ctwing_online, vigil_device_id
from firmware_bridge.registry import spec
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import T0, Cloud

IMEI_CT = "868120012345678"
IMEI_ON = "868120087654321"
SMOKE = DeviceKind.SMOKE_ALARM


def _payload(seq: int) -> bytes:
    n = len(spec(SMOKE).channels)
    r = Reading(
        kind=SMOKE,
        device_id="x",
        seq=seq,
        time=T0,
        battery_pct=80.0,
        flags=0,
        values=tuple(1.0 for _ in range(n)),
        fw_version=0x0100,
    )
    return spec(SMOKE).codec.encode(r)


def _sig(token: str, nonce: str, msg: str) -> str:
    return base64.b64encode(hashlib.md5((token + nonce + msg).encode()).digest()).decode()


async def _register(c: Cloud) -> None:
    for dev, gw in ((IMEI_CT, "ctwing"), (IMEI_ON, "")):
        r = await c.client.post(
            "/api/v1/devices",
            json={"device_id": dev, "kind": "smoke_alarm", "gateway_id": gw},
            headers=c.admin,
        )
        assert r.status_code == 201, r.text


async def test_ctwing_data_report_stored_once(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    await _register(c)
    body = build_ctwing_data_report(IMEI_CT, "dev-aep-1", _payload(7), T0 + 5)
    url = "/api/v1/push/ctwing?token=ctwing-secret-token"
    r = await c.client.post(url, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 1
    again = await c.client.post(url, content=body, headers={"content-type": "application/json"})
    assert again.json()["duplicate_push"] is True  # the platform's retry is stored once
    dev = (await c.client.get(f"/api/v1/devices/{IMEI_CT}", headers=c.viewer)).json()
    assert dev["last_seq"] == 7 and dev["last_seen"] == T0 + 5
    # stored under the canonical id, the same one the serial link would give this IMEI
    assert len(c.state.store.query(vigil_device_id(IMEI_CT), SMOKE, T0, T0 + 10)) == 1


async def test_ctwing_auth_errors_and_bad_bodies(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    await _register(c)
    body = build_ctwing_data_report(IMEI_CT, "dev-aep-1", _payload(1), T0)
    assert (await c.client.post("/api/v1/push/ctwing?token=wrong", content=body)).status_code == 403
    url = "/api/v1/push/ctwing?token=ctwing-secret-token"
    r = await c.client.post(url, content=b"{not json")
    assert r.status_code == 400 and "json" in r.json()["detail"]
    r = await c.client.post(url, content=build_ctwing_data_report(IMEI_CT, "d", b"\x01\x02\x03", T0))
    assert r.status_code == 400 and "length" in r.json()["detail"]
    r = await c.client.post(url, content=build_ctwing_data_report("868120000000000", "d", _payload(1), T0))
    assert r.status_code == 404
    r = await c.client.post(url, content=build_ctwing_online("dev-aep-1", False, T0))
    assert r.status_code == 200 and r.json()["ignored"] == 1
    metrics = (await c.client.get("/metrics")).text
    assert 'vigil_cloud_push_messages_total{platform="ctwing",result="bad_token"} 1.0' in metrics
    assert 'vigil_cloud_push_messages_total{platform="ctwing",result="length"} 1.0' in metrics


async def test_onenet_url_verification(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    params = {
        "msg": "xyzabc",
        "nonce": "abcdefgh",
        "signature": _sig("onenet-secret-token", "abcdefgh", "xyzabc"),
    }
    r = await c.client.get("/api/v1/push/onenet", params=params)
    assert r.status_code == 200 and r.text == "xyzabc"
    r = await c.client.get(
        "/api/v1/push/onenet", params={**params, "signature": _sig("other", "abcdefgh", "xyzabc")}
    )
    assert r.status_code == 403


async def test_onenet_data_push_keeps_good_messages(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    await _register(c)
    msgs = [
        {
            "type": 1,
            "dev_id": 2016617,
            "imei": IMEI_ON,
            "ds_id": "payload",
            "at": int((T0 + 1) * 1000),
            "value": _payload(3).hex(),
        },
        {
            "type": 1,
            "dev_id": 2016617,
            "imei": IMEI_ON,
            "ds_id": "payload",
            "at": int((T0 + 2) * 1000),
            "value": "zz",
        },  # not hex: rejected, neighbours kept
        {"type": 2, "dev_id": 2016617, "status": 1, "at": int(T0 * 1000)},  # online event: ignored
    ]
    msg_text = json.dumps(msgs, separators=(",", ":"))
    body = json.dumps(
        {
            "msg": json.loads(msg_text),
            "nonce": "n0nce123",
            "msg_signature": _sig("onenet-secret-token", "n0nce123", msg_text),
        },
        separators=(",", ":"),
    )
    r = await c.client.post("/api/v1/push/onenet", content=body.encode())
    assert r.status_code == 200, r.text
    assert r.json() == {"stored": 1, "duplicates": 0, "rejected": 1, "ignored": 1, "duplicate_push": False}
    bad = body.replace("n0nce123", "n0nce124", 1)
    assert (await c.client.post("/api/v1/push/onenet", content=bad.encode())).status_code == 403


async def test_unconfigured_push_endpoints_are_404(tmp_path, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    from tests.cloud.cloudkit import make_settings, start_cloud

    async with start_cloud(make_settings(tmp_path, sqlite_url, ctwing_token="", onenet_token="")) as c:
        assert (await c.client.post("/api/v1/push/ctwing?token=", content=b"{}")).status_code == 404
        r = await c.client.get("/api/v1/push/onenet", params={"msg": "a", "nonce": "b", "signature": "c"})
        assert r.status_code == 404
