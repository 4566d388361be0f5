"""MqttTransport's queue is bounded by bytes as well as by count, and every drop is counted and reported.

Against a real Mosquitto (tests/servers.py): a flood of large messages keeps the held payload under
``queue_bytes``; drops are counted by reason, handed to the caller's ``on_drop`` and logged with
throttling (one line per interval, with the counts since the last line).
"""

from __future__ import annotations

import logging

import pytest

from firmware_bridge.transports import OverflowPolicy
from tests.firmware_bridge.test_transport_mqtt import take, transport, unique, until
from tests.servers import MosquittoServer

KB = 1024


@pytest.mark.parametrize("policy", [OverflowPolicy.DROP_OLDEST, OverflowPolicy.DROP_NEWEST])
async def test_a_flood_of_large_messages_stays_within_the_byte_bound(
    mosquitto: MosquittoServer, policy: OverflowPolicy, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("bytes")
    seen: list[tuple[str, int]] = []
    with caplog.at_level(logging.WARNING, logger="firmware_bridge.transports.mqtt"):
        async with (
            transport(
                mosquitto,
                [(topic, 1)],
                queue_size=1000,  # the count bound is far away: only bytes can bind
                queue_bytes=256 * KB,
                overflow=policy,
                on_drop=lambda reason, n: seen.append((reason, n)),
                log_interval_s=3600.0,
            ) as sub,
            transport(mosquitto, []) as pub,
        ):
            await sub.wait_connected()
            for i in range(40):  # 40 x 64 KiB = 2.5 MiB offered to a 256 KiB queue
                await pub.publish(topic, bytes([i]) * (64 * KB), qos=1)
            await pub.publish(topic, b"x" * (300 * KB), qos=1)  # larger than the whole bound
            await until(lambda: sub.received_total == 41)
            assert sub.queued == 4 and sub.queued_bytes == 256 * KB
            assert sub.drops == {"queue_full": 0, "bytes_full": 36, "oversize": 1}
            assert sub.dropped_total == 37 and sub.dropped_bytes_total == 36 * 64 * KB + 300 * KB
            assert sorted(set(seen)) == [("bytes_full", 64 * KB), ("oversize", 300 * KB)]
            assert len(seen) == 37  # the caller's counter sees every drop
            got = await take(sub.messages(), 4)
            kept = [m.payload[0] for m in got]
            assert kept == ([36, 37, 38, 39] if policy is OverflowPolicy.DROP_OLDEST else [0, 1, 2, 3])
            assert sub.queued_bytes == 0  # consumed messages leave the byte account
    lines = [r.getMessage() for r in caplog.records if "queue bounds" in r.getMessage()]
    assert len(lines) == 1  # throttled: one line for 37 drops within the interval
    assert "bytes_full 1" in lines[0] and "262144 bytes" in lines[0]


async def test_count_drops_are_counted_and_logged_again_after_the_interval(
    mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("count")
    with caplog.at_level(logging.WARNING, logger="firmware_bridge.transports.mqtt"):
        async with (
            transport(mosquitto, [(topic, 1)], queue_size=3, log_interval_s=0.0) as sub,
            transport(mosquitto, []) as pub,
        ):
            await sub.wait_connected()
            for i in range(8):
                await pub.publish(topic, str(i).encode(), qos=1)
            await until(lambda: sub.received_total == 8)
            assert sub.drops["queue_full"] == 5 and sub.dropped_total == 5
            assert sub.queued_bytes == 3  # "5", "6", "7"
    lines = [r.getMessage() for r in caplog.records if "queue bounds" in r.getMessage()]
    assert len(lines) == 5  # no throttling with a zero interval: every drop has its line
    assert lines[-1].endswith("5 (5 bytes) in total")


def test_bounds_must_be_positive() -> None:
    from firmware_bridge.transports import MqttTransport

    with pytest.raises(ValueError, match="queue_bytes"):
        MqttTransport("h", 1, client_id="c", topics=[], queue_bytes=0)
