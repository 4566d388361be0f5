"""The gateway's MQTT source acknowledges after the outbox commit, bounds what it holds by bytes, and
counts every drop (issue 11), against the real Mosquitto of the test session."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

import aiomqtt

from edge.config import GatewayConfig, MqttSource, parse_config
from edge.metrics import GatewayMetrics
from edge.outbox import iter_telemetry
from edge.sources.base import FrameSink, SourceFrame
from edge.sources.mqtt import flows, run_mqtt_source
from firmware_bridge.kernel.clock import SystemClock
from tests.aio import cancel_and_wait
from tests.edge.helpers import manhole_payload
from tests.edge.test_daemon import running
from tests.servers import MosquittoServer


def rand_dev() -> str:
    return secrets.token_hex(8)


def gateway(tmp_path: Path, mosquitto: MosquittoServer, client_id: str, extra: str = "") -> GatewayConfig:
    return parse_config(
        f"""
[gateway]
id = "gw-{secrets.token_hex(3)}"
data_dir = "{tmp_path / "data"}"
[[sources.mqtt]]
name = "mq"
host = "{mosquitto.host}"
port = {mosquitto.port}
client_id = "{client_id}"
topics = ["vigil/v1/dev/+/+/up"]
{extra}
[uplink]
mode = "none"
[detection]
batch_window_ms = 10
[metrics]
enabled = false
""",
        tmp_path / "gw.toml",
    )


def stored(cfg: GatewayConfig, device: str) -> int:
    return sum(1 for b in iter_telemetry(cfg.outbox_path) for d in b.device_id if d == device)


async def next_frame(sink: FrameSink, timeout: float = 10.0) -> SourceFrame:
    return await asyncio.wait_for(sink.queue.get(), timeout)


@contextlib.asynccontextmanager
async def bare_source(mosquitto: MosquittoServer, client_id: str, sink: FrameSink):  # type: ignore[no-untyped-def]
    """The MQTT source alone on a FrameSink nobody commits: the gateway dies before its outbox commit."""
    cfg = MqttSource(
        host=mosquitto.host, port=mosquitto.port, topics=["vigil/v1/dev/+/+/up"], client_id=client_id
    )
    task = asyncio.create_task(run_mqtt_source(cfg, "mq", sink, None, SystemClock(), "gw"))
    await asyncio.wait_for(sink.wait_up("mq"), 10)
    try:
        yield
    finally:
        await cancel_and_wait(task)


async def test_uncommitted_message_is_redelivered_and_stored_once(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    client_id = f"t-ack-{secrets.token_hex(4)}"
    dev, marker = rand_dev(), rand_dev()
    cfg = gateway(tmp_path, mosquitto, client_id)
    sink = FrameSink(GatewayMetrics())
    async with bare_source(mosquitto, client_id, sink), aiomqtt.Client(mosquitto.host, mosquitto.port) as pub:
        await pub.publish(f"vigil/v1/dev/manhole/{dev}/up", manhole_payload(1, 1), qos=1)
        frame = await next_frame(sink)
        assert frame[0] == dev
        # a failed commit: not acknowledged, the source reconnects and the broker redelivers it
        sink.settle([frame], False)
        again = await next_frame(sink)
        assert again[:2] == frame[:2]
        assert flows["mq"].dropped == {"mqtt_not_committed": 1}
        assert (
            sink.metrics.registry.get_sample_value(
                "vigil_gateway_dropped_total", {"what": "mqtt_not_committed"}
            )
            == 1
        )
        # ...and now the commit never happens: the gateway stops (kill -9 is the same for the broker)
    # the gateway comes back with the same client id: the broker redelivers, the pipeline commits it once
    async with running(cfg) as gw, aiomqtt.Client(mosquitto.host, mosquitto.port) as pub:
        await gw.pipeline.wait_for(lambda: gw.pipeline.frames_total >= 1)
        await pub.publish(f"vigil/v1/dev/manhole/{marker}/up", manhole_payload(2, 1), qos=1)
        await gw.pipeline.wait_for(lambda: gw.pipeline.frames_total >= 2)
        assert flows["mq"].acked == 2
    assert stored(cfg, dev) == 1
    # acknowledged after the commit: a third run gets nothing again
    async with running(cfg) as gw, aiomqtt.Client(mosquitto.host, mosquitto.port) as pub:
        await pub.publish(f"vigil/v1/dev/manhole/{marker}/up", manhole_payload(2, 2), qos=1)
        await gw.pipeline.wait_for(lambda: gw.pipeline.frames_total >= 1)
        await asyncio.sleep(0.5)
        assert gw.pipeline.frames_total == 1
    assert stored(cfg, dev) == 1
    assert stored(cfg, marker) == 2


async def test_megabyte_flood_stays_within_the_byte_bound_and_drops_are_counted(
    tmp_path: Path, mosquitto: MosquittoServer
) -> None:
    client_id = f"t-flood-{secrets.token_hex(4)}"
    bound = 2_500_000
    cfg = gateway(
        tmp_path, mosquitto, client_id, f"max_pending_bytes = {bound}\nmax_message_bytes = 1_100_000"
    )
    dev, marker = rand_dev(), rand_dev()
    big = secrets.token_bytes(1_000_000)
    huge = secrets.token_bytes(1_500_000)
    async with running(cfg) as gw, aiomqtt.Client(mosquitto.host, mosquitto.port) as pub:
        for i in range(30):
            await pub.publish(f"vigil/v1/dev/manhole/{dev}/up", big, qos=1)  # fits: throttled, not dropped
            if i % 3 == 0:
                await pub.publish(f"vigil/v1/dev/manhole/{dev}/up", huge, qos=1)  # too large: dropped
        await pub.publish(f"vigil/v1/dev/manhole/{marker}/up", manhole_payload(3, 1), qos=1)
        await gw.pipeline.wait_for(lambda: stored(cfg, marker) == 1, timeout=60)
        flow = flows["mq"]
        assert 0 < flow.peak_bytes <= bound
        assert flow.dropped == {"mqtt_too_large": 10}
        assert (
            gw.metrics.registry.get_sample_value("vigil_gateway_dropped_total", {"what": "mqtt_too_large"})
            == 10
        )
        assert flow.acked == 31  # every message that fits was committed (as a reject) and acknowledged
        assert flow.pending == 0 and flow.pending_bytes == 0
    print(
        f"flood: peak {flow.peak_bytes} bytes (bound {bound}), peak {flow.peak} messages, "
        f"throttled {flow.throttled}, dropped {flow.dropped}"
    )
