"""The app as a whole: health, metrics, OpenAPI, body limit, malformed bodies, history API, real uvicorn."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import uvicorn

from alerts.contract import HTTP_PATH, UplinkAck
from cloud.app import create_app
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import GW1, MANHOLE_1, T0, Cloud, batch, body, make_settings, readings
from tests.servers import free_port

M = DeviceKind.MANHOLE
JSON = {"content-type": "application/json"}


async def test_healthz_openapi_and_metric_names(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    assert (await c.client.get("/healthz")).json() == {"status": "ok", "database": True}
    spec = (await c.client.get("/openapi.json")).json()
    assert HTTP_PATH in spec["paths"] and "/api/v1/alerts" in spec["paths"]
    assert "UplinkBatch" in spec["components"]["schemas"]
    await c.client.get("/api/v1/devices/70B3D57ED0000001", headers=c.viewer)
    assert (await c.client.get("/no/such/path")).status_code == 404
    text = (await c.client.get("/metrics")).text
    names = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }
    assert names and all(n.startswith("vigil_cloud_") for n in names)
    # labelled by route template, not by raw path
    assert 'route="/api/v1/devices/{device_id}",status="200"' in text
    assert 'vigil_cloud_http_requests_total{route="unmatched",status="404"} 1.0' in text
    assert 'vigil_cloud_http_request_seconds_count{route="/api/v1/devices/{device_id}"} 1.0' in text


async def test_request_metrics_count_a_handler_that_raised_as_500() -> None:
    from cloud.app import RequestMetrics
    from cloud.metrics import CloudMetrics

    async def broken(scope: object, receive: object, send: object) -> None:
        raise RuntimeError("handler bug")

    metrics = CloudMetrics()
    mw = RequestMetrics(broken, metrics=metrics)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: object) -> None:
        return None

    try:
        await mw({"type": "http", "path": "/x"}, receive, send)
    except RuntimeError:
        pass
    else:
        raise AssertionError("the middleware must not swallow the handler's error")
    assert metrics.http_requests.labels("unmatched", "500")._value.get() == 1


async def test_oversized_body_is_413_by_header_and_by_stream(tmp_path: Path, sqlite_url: str) -> None:
    from tests.cloud.cloudkit import start_cloud

    async with start_cloud(make_settings(tmp_path, sqlite_url, max_body_bytes=4096)) as c:
        big = b"{" + b" " * 10_000 + b"}"
        r = await c.client.post(HTTP_PATH, content=big, headers={**c.gw1, **JSON})
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: chunked
            for _ in range(10):
                yield b" " * 1000

        r = await c.client.post(HTTP_PATH, content=chunks(), headers={**c.gw1, **JSON})
        assert r.status_code == 413
        assert 'vigil_cloud_rejects_total{reason="too_large"} 2.0' in (await c.client.get("/metrics")).text


async def test_malformed_and_invalid_batches_are_422_with_reasons(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    r = await c.client.post(HTTP_PATH, content=b"{not json", headers={**c.gw1, **JSON})
    assert r.status_code == 422 and r.json()["error"] == "validation"
    doc = json.loads(body(batch("batch-bad-1", readings(M, MANHOLE_1, [1, 2]))))
    doc["telemetry"][0]["seq"] = [1]  # columns disagree
    r = await c.client.post(HTTP_PATH, json=doc, headers=c.gw1)
    assert r.status_code == 422 and "seq" in json.dumps(r.json()["errors"])
    doc["contract_version"] = 99
    assert (await c.client.post(HTTP_PATH, json=doc, headers=c.gw1)).status_code == 422
    assert 'vigil_cloud_rejects_total{reason="validation"} 3.0' in (await c.client.get("/metrics")).text


async def test_readings_history_full_and_downsampled(cloud: Cloud) -> None:
    c = cloud
    seqs = list(range(1, 121))
    await c.state.ingest.ingest(
        batch("batch-hist-1", readings(M, MANHOLE_1, seqs, step=30.0)), gateway_id=GW1
    )
    url = f"/api/v1/devices/{MANHOLE_1}/readings"
    r = await c.client.get(url, params={"start": T0, "end": T0 + 3600}, headers=c.viewer)
    assert r.status_code == 200, r.text
    full = r.json()
    assert not full["downsampled"] and len(full["time"]) == 120 and full["time"][0] == T0
    r = await c.client.get(
        url,
        params={"start": T0, "end": T0 + 3600, "max_points": 10, "channels": "tilt_deg"},
        headers=c.viewer,
    )
    ds = r.json()
    assert ds["downsampled"] and 0 < len(ds["time"]) <= 10 and len(ds["values"]) == 1
    bad = await c.client.get(
        url, params={"start": T0, "end": T0 + 60, "channels": "no_such"}, headers=c.viewer
    )
    assert bad.status_code == 400
    assert (
        await c.client.get(url, params={"start": T0 + 60, "end": T0}, headers=c.viewer)
    ).status_code == 400


async def test_end_to_end_over_real_http(tmp_path: Path, sqlite_url: str) -> None:
    """A real uvicorn on a free port: provision, ingest over HTTP, read it back."""
    settings = make_settings(tmp_path, sqlite_url, port=free_port())
    app = await asyncio.to_thread(create_app, settings)
    st = app.state.vigil
    gw_token = await asyncio.to_thread(st.credentials.add_gateway, GW1, now=T0)
    viewer = await asyncio.to_thread(st.credentials.add_user, "v", "viewer", now=T0)
    await asyncio.to_thread(
        st.registry.import_csv, f"device_id,kind,gateway_id\n{MANHOLE_1},manhole,{GW1}\n", now=T0
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=settings.port, log_config=None, access_log=False, lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.port}", timeout=10) as client:
            for _ in range(500):  # wait for the server's own "started" flag, not a fixed sleep
                if server.started:
                    break
                await asyncio.sleep(0.01)
            assert server.started
            b = batch("batch-e2e-0001", readings(M, MANHOLE_1, [1, 2, 3]))
            r = await client.post(
                HTTP_PATH, content=body(b), headers={"Authorization": f"Bearer {gw_token}", **JSON}
            )
            assert r.status_code == 200, r.text
            assert UplinkAck.model_validate(r.json()).telemetry_stored == 3
            dev = await client.get(
                f"/api/v1/devices/{MANHOLE_1}", headers={"Authorization": f"Bearer {viewer}"}
            )
            assert dev.json()["last_seq"] == 3
    finally:
        server.should_exit = True
        await task


def test_json_log_lines_carry_extras() -> None:
    import logging

    from cloud.logs import JsonFormatter

    rec = logging.LogRecord("cloud.ingest", logging.WARNING, __file__, 1, "refused %d", (3,), None)
    rec.gateway_id = GW1
    rec.color_message = "\x1b[36mrefused\x1b[0m"
    line = json.loads(JsonFormatter().format(rec))
    assert line["level"] == "warning" and line["msg"] == "refused 3" and line["gateway_id"] == GW1
    assert "color_message" not in line and isinstance(line["ts"], float)


def test_settings_from_env_name_the_bad_variable() -> None:
    import pytest

    from cloud.errors import ConfigError
    from cloud.settings import CloudSettings

    s = CloudSettings.from_env(
        {"VIGIL_CLOUD_PORT": "9000", "VIGIL_CLOUD_DATABASE_URL": "postgresql://db/vigil"}
    )
    assert s.port == 9000 and not s.is_embedded and not s.should_migrate
    assert CloudSettings.from_env({}, port=None).port == 8080 and CloudSettings.from_env({}).should_migrate
    with pytest.raises(ConfigError, match="VIGIL_CLOUD_PORT"):
        CloudSettings.from_env({"VIGIL_CLOUD_PORT": "eighty"})


async def test_unknown_route_and_method_are_json_4xx(cloud_sqlite: Cloud) -> None:
    c = cloud_sqlite
    r = await c.client.get("/api/v1/nope")
    assert r.status_code == 404 and r.json()["error"] == "http_404"
    r = await c.client.delete(HTTP_PATH)
    assert r.status_code == 405 and r.json()["error"] == "http_405"
    text = (await c.client.get("/metrics")).text
    assert 'vigil_cloud_rejects_total{reason="http_404"} 1.0' in text
    assert 'route="unmatched",status="404"' in text
