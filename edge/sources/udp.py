"""The Semtech UDP packet-forwarder listener (what a LoRa concentrator on the Pi speaks, port 1700).

PUSH_DATA is answered with PUSH_ACK and PULL_DATA with PULL_ACK (Lora-net/packet_forwarder PROTOCOL.TXT);
each ``rxpk`` is a LoRaWAN PHYPayload decoded with the device's session keys (:mod:`edge.sources.lora`).
A bad rxpk is counted and logged; its neighbours in the same datagram still go through.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

from edge.config import UdpSource
from edge.sources.base import FrameSink
from edge.sources.lora import LoRaWANSessions
from firmware_bridge.errors import DecodeError
from firmware_bridge.kernel.clock import Clock


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, name: str, sink: FrameSink, sessions: LoRaWANSessions, clock: Clock) -> None:
        self.name, self.sink, self.sessions, self.clock = name, sink, sessions, clock
        self.transport: asyncio.DatagramTransport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        from firmware_bridge import semtech_udp

        now = self.clock.now()
        try:
            d = semtech_udp.parse_datagram(data)
        except DecodeError as exc:
            self.sink.reject(self.name, exc.reason, data, str(exc))
            return
        ack = semtech_udp.build_ack(d)
        if ack is not None and self.transport is not None:
            self.transport.sendto(ack, addr)
        for bad in d.rejects:
            self.sink.reject(self.name, bad.reason, bad.data, str(bad))
        for rx in d.rxpk:
            try:
                dev, payload, counter = self.sessions.decode_counted(rx.data)
            except DecodeError as exc:
                self.sink.reject(self.name, exc.reason, rx.data, str(exc))
                continue
            # the frame counter is persisted only once the frame is committed (edge/sources/lora.py)
            self.sink.offer((dev, payload, now, self.name), functools.partial(self._committed, counter))

    def _committed(self, counter: tuple[int, int], ok: bool) -> None:
        if ok:
            self.sessions.confirm(counter)


async def run_udp_source(
    cfg: UdpSource,
    name: str,
    sink: FrameSink,
    sessions: LoRaWANSessions,
    clock: Clock,
    ready: asyncio.Future[int] | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Protocol(name, sink, sessions, clock), local_addr=(cfg.bind, cfg.port)
    )
    sink.mark_up(name, True)
    try:
        if ready is not None and not ready.done():
            ready.set_result(int(transport.get_extra_info("sockname")[1]))
        await proto.lost
    finally:
        sink.mark_up(name, False)
        transport.close()
