"""Serial sources: our SLIP link frames from a LoRa/433 MHz bridge radio, or NB-IoT module URCs.

``framing = "slip"``: :class:`firmware_bridge.framing.FrameDecoder` turns the byte stream into verified
``LinkFrame(device_id, payload)``; CRC/escape/oversize rejects are counted with their bytes.

``framing = "nbiot"``: :class:`firmware_bridge.nbiot.UrcDecoder` extracts payloads from ``+NNMI`` /
``+NSONMI``+``AT+NSORF`` / ``+QLWDATARECV`` URCs. Each NB-IoT payload carries our link-frame body
``device_id(8) | payload | CRC-16/CCITT-FALSE(2)`` (no SLIP: the URC already delimits it), because an NB-IoT
datagram says nothing about which device sent it.
"""

from __future__ import annotations

import binascii

from edge.config import SerialSource
from edge.sources.base import FrameSink
from firmware_bridge.errors import DecodeError
from firmware_bridge.kernel.clock import Clock


def split_link_body(body: bytes) -> tuple[str, bytes]:
    """``device_id(8) | payload | CRC16`` -> (device id hex, payload); raises :class:`DecodeError`."""
    if len(body) < 10:
        raise DecodeError(f"link frame body of {len(body)} bytes is too short", reason="short", data=body)
    if binascii.crc_hqx(body, 0xFFFF) != 0:
        raise DecodeError("link frame CRC mismatch", reason="crc", data=body)
    return body[:8].hex(), body[8:-2]


async def run_serial_source(cfg: SerialSource, name: str, sink: FrameSink, clock: Clock) -> None:
    from firmware_bridge.transports.serial import SerialTransport

    async with SerialTransport(cfg.port, cfg.baudrate) as transport:
        sink.mark_up(name, transport.connected)
        try:
            if cfg.framing == "slip":
                from firmware_bridge.framing import FrameDecoder

                dec = FrameDecoder(on_reject=lambda reason, raw: sink.reject(name, reason, raw))
                async for chunk in transport.chunks():
                    now = clock.now()
                    if dec.bytes_total == 0:
                        sink.mark_up(name, True)  # reopened after the radio was plugged in
                    for f in dec.feed(chunk):
                        await sink.put((f.device_id, f.payload, now, name))
            else:
                from firmware_bridge import nbiot

                urc = nbiot.UrcDecoder()
                seen: dict[str, int] = {}
                async for chunk in transport.chunks():
                    now = clock.now()
                    for item in urc.feed(chunk):
                        if isinstance(item, nbiot.ReadRequest):
                            await transport.write(nbiot.read_command(item))
                            continue
                        try:
                            dev, payload = split_link_body(item.data)
                        except DecodeError as exc:
                            sink.reject(name, exc.reason, exc.data, str(exc))
                            continue
                        await sink.put((dev, payload, now, name))
                    if urc.rejects != seen:
                        for reason, n in urc.rejects.items():
                            for _ in range(n - seen.get(reason, 0)):
                                sink.reject(name, reason, None, "bad URC line")
                        seen = dict(urc.rejects)
        finally:
            sink.mark_up(name, False)
