"""Serial sources: our SLIP link frames from a LoRa/433 MHz bridge radio, or NB-IoT module URCs.

``framing = "slip"``: :class:`firmware_bridge.framing.FrameDecoder` turns the byte stream into verified
``LinkFrame(device_id, payload)``; CRC/escape/oversize rejects are counted with their bytes.

``framing = "nbiot"``: :class:`firmware_bridge.nbiot.LinkUrcDecoder` extracts our link-frame body
``device_id(8) | payload | CRC-16/CCITT-FALSE(2)`` (no SLIP: the URC already delimits it) from ``+NNMI`` /
``+NSONMI``+``AT+NSORF`` / ``+QLWDATARECV`` URCs, because an NB-IoT datagram says nothing about which device
sent it. ``vigil frame decode --format nbiot`` runs the same decoder.
"""

from __future__ import annotations

from edge.config import SerialSource
from edge.sources.base import FrameSink
from firmware_bridge.kernel.clock import Clock


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

                # the same parser as `vigil frame decode --format nbiot`: URC -> link body -> frame
                urc = nbiot.LinkUrcDecoder(on_reject=lambda reason, raw: sink.reject(name, reason, raw))
                async for chunk in transport.chunks():
                    now = clock.now()
                    for item in urc.feed(chunk):
                        if isinstance(item, nbiot.ReadRequest):
                            await transport.write(nbiot.read_command(item))
                        else:
                            await sink.put((item.device_id, item.payload, now, name))
        finally:
            sink.mark_up(name, False)
