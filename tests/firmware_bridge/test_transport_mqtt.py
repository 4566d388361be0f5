"""MqttTransport against a real Mosquitto started by the tests (tests/servers.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from firmware_bridge.errors import TransportError
from firmware_bridge.transports import MqttMessage, MqttTransport, OverflowPolicy
from tests.servers import MosquittoServer, free_port, start_mosquitto


def unique(prefix: str) -> str:
    return f"vigil-test/{prefix}/{uuid.uuid4().hex[:12]}"


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll a transport counter (there is no event for 'n messages arrived')."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def take(messages: AsyncIterator[MqttMessage], n: int, timeout: float = 20.0) -> list[MqttMessage]:
    out: list[MqttMessage] = []
    async with asyncio.timeout(timeout):
        async for m in messages:
            out.append(m)
            if len(out) == n:
                break
    return out


def transport(server: MosquittoServer, topics: list[tuple[str, int]], **kw: object) -> MqttTransport:
    kw.setdefault("client_id", f"t-{uuid.uuid4().hex[:10]}")
    return MqttTransport(server.host, server.port, topics=topics, min_backoff=0.05, max_backoff=0.5, **kw)  # type: ignore[arg-type]


async def test_publish_and_receive_in_order(mosquitto: MosquittoServer) -> None:
    base = unique("order")
    async with transport(mosquitto, [(f"{base}/+/up", 1)]) as sub, transport(mosquitto, []) as pub:
        async with asyncio.timeout(20):
            await sub.wait_connected()
        assert sub.connected
        for i in range(200):
            await pub.publish(f"{base}/dev{i % 3}/up", bytes([i % 256]) * 3, qos=1)
        await pub.publish(f"{base}/dev0/down", b"not subscribed", qos=1)
        got = await take(sub.messages(), 200)
        assert [m.payload for m in got] == [bytes([i % 256]) * 3 for i in range(200)]
        assert got[5] == MqttMessage(f"{base}/dev2/up", b"\x05\x05\x05", 1, False)
        assert pub.published_total == 201
        assert sub.received_total == 200 and sub.dropped_total == 0 and sub.reconnects_total == 0


@pytest.mark.parametrize(
    ("policy", "kept"),
    [(OverflowPolicy.DROP_OLDEST, range(15, 20)), (OverflowPolicy.DROP_NEWEST, range(0, 5))],
)
async def test_bounded_queue_drops_by_named_policy(
    mosquitto: MosquittoServer, policy: OverflowPolicy, kept: range
) -> None:
    topic = unique("overflow")
    async with (
        transport(mosquitto, [(topic, 1)], queue_size=5, overflow=policy) as sub,
        transport(mosquitto, []) as pub,
    ):
        async with asyncio.timeout(20):
            await sub.wait_connected()
        for i in range(20):
            await pub.publish(topic, str(i).encode())
        await until(lambda: sub.received_total == 20)
        assert sub.dropped_total == 15 and sub.queued == 5
        got = await take(sub.messages(), 5)
        assert [int(m.payload) for m in got] == list(kept)


async def test_persistent_session_keeps_messages_sent_while_away(mosquitto: MosquittoServer) -> None:
    topic = unique("session")
    client_id = f"gw-{uuid.uuid4().hex[:8]}"
    async with transport(mosquitto, [(topic, 1)], client_id=client_id) as sub:
        async with asyncio.timeout(20):
            await sub.wait_connected()
    async with transport(mosquitto, []) as pub:
        for i in range(3):
            await pub.publish(topic, f"while-away-{i}".encode(), qos=1)
    async with transport(mosquitto, [(topic, 1)], client_id=client_id) as sub:
        got = await take(sub.messages(), 3)
    assert [m.payload for m in got] == [b"while-away-0", b"while-away-1", b"while-away-2"]


async def test_reconnects_and_resubscribes_after_broker_restart(tmp_path: Path) -> None:
    broker = start_mosquitto(tmp_path / "broker", port=free_port())
    topic = unique("restart")
    try:
        async with transport(broker, [(topic, 1)]) as sub, transport(broker, []) as pub:
            async with asyncio.timeout(20):
                await sub.wait_connected()
            await pub.publish(topic, b"before")
            assert [m.payload for m in await take(sub.messages(), 1)] == [b"before"]

            broker.stop()
            await until(lambda: not sub.connected and not pub.connected)
            # Forget every session and subscription the broker persisted: only our explicit re-subscribe
            # can make the message below arrive.
            for f in broker.directory.glob("*.db"):
                f.unlink()
            pending = asyncio.create_task(pub.publish(topic, b"queued-while-down", timeout=30), name="pub")
            broker.start()  # same port

            async with asyncio.timeout(30):
                await sub.wait_connected()
                await pending
            await pub.publish(topic, b"after")
            got: list[bytes] = []
            async with asyncio.timeout(20):
                async for m in sub.messages():
                    got.append(m.payload)
                    if m.payload == b"after":
                        break
            # The publish issued while the broker was down may reach it before the subscriber has
            # re-subscribed (then it is not for us: QoS applies per subscription); "after" must arrive.
            assert got in ([b"after"], [b"queued-while-down", b"after"])
            assert sub.reconnects_total >= 1 and pub.reconnects_total >= 1
            assert sub.last_error is not None
    finally:
        broker.stop()


async def test_publish_times_out_with_typed_error_when_broker_is_down() -> None:
    port = free_port()  # nothing listens here
    async with MqttTransport(
        "127.0.0.1", port, client_id="lonely", topics=[], min_backoff=0.05, max_backoff=0.1
    ) as pub:
        with pytest.raises(TransportError, match="not acknowledged"):
            await pub.publish("x/y", b"1", timeout=0.3)
        await until(lambda: pub.reconnects_total >= 2)
        assert not pub.connected


async def test_messages_iterator_ends_when_transport_closes(mosquitto: MosquittoServer) -> None:
    sub = transport(mosquitto, [(unique("close"), 0)])
    async with sub:
        it = sub.messages()
        nxt = asyncio.ensure_future(anext(it))
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(5):
            await nxt


def test_bad_subscriptions_are_rejected_early() -> None:
    with pytest.raises(ValueError, match="qos"):
        MqttTransport("h", 1, client_id="c", topics=[("a/b", 3)])
    with pytest.raises(ValueError, match="queue_size"):
        MqttTransport("h", 1, client_id="c", topics=[], queue_size=0)
    with pytest.raises(ValueError):
        MqttTransport("h", 1, client_id="c", topics=[], overflow="drop_everything")


def test_repr_never_shows_the_password() -> None:
    t = MqttTransport("h", 1, client_id="c", topics=[], username="gw", password="s3cret-pw")
    assert "s3cret-pw" not in repr(t) and "s3cret-pw" not in str(vars(t).get("password", ""))


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a/+b/c", "x\0y"])
def test_invalid_topic_filters_are_rejected_before_connecting(bad: str) -> None:
    with pytest.raises(ValueError, match="topic filter"):
        MqttTransport("h", 1, client_id="c", topics=[(bad, 1)])


async def test_an_error_in_the_body_propagates_unwrapped(mosquitto: MosquittoServer) -> None:
    with pytest.raises(KeyError, match="boom"):
        async with transport(mosquitto, [(unique("body"), 1)]) as sub:
            async with asyncio.timeout(20):
                await sub.wait_connected()
            raise KeyError("boom")
    assert not sub.connected


def _self_signed_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (written with the ``cryptography`` package)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vigil test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


async def test_tls_with_a_verifying_context(tmp_path: Path) -> None:
    import ssl

    ca, cert, key = _self_signed_ca_and_server_cert(tmp_path)
    broker = start_mosquitto(
        tmp_path / "tls-broker", port=free_port(), extra_config=f"certfile {cert}\nkeyfile {key}\n"
    )
    try:
        context = ssl.create_default_context(cafile=str(ca))  # verifies the chain and 127.0.0.1
        topic = unique("tls")
        async with (
            transport(broker, [(topic, 1)], tls=context) as sub,
            transport(broker, [], tls=context) as pub,
        ):
            async with asyncio.timeout(20):
                await sub.wait_connected()
            await pub.publish(topic, b"over tls")
            assert [m.payload for m in await take(sub.messages(), 1)] == [b"over tls"]
        # A client that does not trust the CA never gets connected (and keeps retrying, counted).
        async with transport(broker, [(topic, 1)], tls=ssl.create_default_context()) as untrusting:
            await until(lambda: untrusting.reconnects_total >= 1)
            assert not untrusting.connected
            assert untrusting.last_error is not None
    finally:
        broker.stop()


class _FlakyLibrary(MqttTransport):
    """The client library fails in an unexpected way on the first attempt (a bug, not a network error)."""

    attempts = 0

    def _client_for_attempt(self):  # type: ignore[no-untyped-def]
        self.attempts += 1
        if self.attempts == 1:
            raise RuntimeError("unexpected library failure")
        return super()._client_for_attempt()


async def test_unexpected_library_error_is_logged_and_retried(
    mosquitto: MosquittoServer, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("supervisor")
    t = _FlakyLibrary(
        mosquitto.host,
        mosquitto.port,
        client_id=f"flaky-{uuid.uuid4().hex[:8]}",
        topics=[(topic, 1)],
        min_backoff=0.01,
    )
    async with t:
        async with asyncio.timeout(20):
            await t.wait_connected()
    assert t.attempts == 2 and t.reconnects_total == 1
    assert t.last_error == "RuntimeError: unexpected library failure"
    assert "connection loop failed unexpectedly" in caplog.text
