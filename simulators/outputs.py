"""Where simulated frames go: files, a serial pseudo-terminal, MQTT, HTTP (CTWing pushes).

Why separate sinks: the fleet only produces :class:`~simulators.faults.SimFrame` objects; each sink turns
them into the bytes of one real path (SLIP link frames on a UART, NB-IoT ``+NNMI`` URCs, our payloads /
ChirpStack JSON / encrypted LoRaWAN PHYPayloads on MQTT, CTWing ``dataReport`` POSTs) using the codecs of
``firmware_bridge`` (the same code the gateway decodes with). Every sink that can fall behind has a bounded
queue with a counted drop (``dropped``): a slow broker must never stall the simulated clock.

Link corruption (``SimFrame.corrupt``) is applied after framing on paths with a link checksum (serial
SLIP/NB-IoT CRC, LoRaWAN MIC); on MQTT-our-payload, ChirpStack and CTWing paths the network would already
have dropped such a frame, so those sinks skip it and count it in ``skipped_corrupt``.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from simulators.errors import OutputError
from simulators.faults import SimFrame

log = logging.getLogger(__name__)


def link_body(frame: SimFrame) -> bytes:
    """``device_id(8) | payload | CRC-16/CCITT-FALSE``: what an NB-IoT URC carries (edge/sources/serial)."""
    from firmware_bridge.framing import encode_link_body

    return encode_link_body(frame.device_id, frame.payload)


@dataclass
class SinkStats:
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    skipped_corrupt: int = 0


class Sink:
    """Base sink: ``offer`` never blocks; ``run`` (a task) drains the queue; ``close`` flushes."""

    name = "sink"

    def __init__(self, queue_size: int = 10_000) -> None:
        self.stats = SinkStats()
        self.queue: asyncio.Queue[SimFrame | None] = asyncio.Queue(maxsize=queue_size)

    def offer(self, frame: SimFrame) -> None:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.stats.dropped += 1

    async def open(self) -> None:
        """Open resources (called before the run)."""

    async def run(self) -> None:
        while True:
            frame = await self.queue.get()
            if frame is None:
                return
            await self.handle(frame)

    async def handle(self, frame: SimFrame) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        await self.queue.put(None)


class FilesSink(Sink):
    """``frames.jsonl``: one line per frame with the payload hex and the SLIP link frame hex."""

    name = "files"

    def __init__(self, outdir: Path) -> None:
        super().__init__(queue_size=1)
        self.path = outdir / "frames.jsonl"
        self._fh: IO[str] | None = None

    async def open(self) -> None:
        from firmware_bridge.framing import encode_frame

        self._encode_frame = encode_frame
        self._fh = self.path.open("w", encoding="utf-8")

    def offer(self, frame: SimFrame) -> None:  # synchronous: files never fall behind
        encode_frame = self._encode_frame
        assert self._fh is not None
        row: dict[str, Any] = {
            "time": round(frame.time, 3),
            "stamp": round(frame.stamp, 3),
            "device_id": frame.device_id,
            "kind": frame.kind.value,
            "gateway_id": frame.gateway_id,
            "seq": frame.seq,
            "payload": frame.payload.hex(),
            "frame": frame.apply_corruption(encode_frame(frame.device_id, frame.payload)).hex(),
        }
        if frame.fault:
            row["fault"] = frame.fault
        if frame.corrupt is not None:  # also a duplicate of a corrupted frame
            row["corrupt"] = True
        self._fh.write(json.dumps(row, separators=(",", ":")) + "\n")
        self.stats.sent += 1

    async def run(self) -> None:
        return

    async def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class SerialSink(Sink):
    """SLIP link frames (or NB-IoT ``+NNMI`` URCs) written to a pseudo-terminal pair or a given path.

    With no path, a pty pair is created and the *slave* path (the one the gateway opens) is written to
    ``serial_ports.txt`` and linked as ``serial`` in the output directory (a fixed path for a gateway's
    config: ``port = ".../serial"``). Writes are non-blocking; if the reader is not keeping up, frames are
    dropped and counted, as a UART with a full buffer would lose them.
    """

    name = "serial"

    def __init__(self, outdir: Path, path: str | None, fmt: str) -> None:
        super().__init__(queue_size=1)
        self.outdir, self.path, self.fmt = outdir, path, fmt
        self.fd = -1
        self.slave_fd = -1
        self.slave_path = ""

    async def open(self) -> None:
        if self.fd >= 0:  # already open (a demo opens it early to learn the slave path)
            return
        try:
            if self.path:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
                self.slave_path = self.path
            else:
                import tty

                self.fd, self.slave_fd = os.openpty()
                tty.setraw(self.slave_fd)
                self.slave_path = os.ttyname(self.slave_fd)
                os.set_blocking(self.fd, False)
        except OSError as exc:
            raise OutputError(
                f"serial output: cannot open {self.path or 'a pseudo-terminal'}: {exc}"
            ) from exc
        (self.outdir / "serial_ports.txt").write_text(self.slave_path + "\n", encoding="utf-8")
        if not self.path:
            link = self.outdir / "serial"
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            with contextlib.suppress(OSError):  # a convenience: serial_ports.txt has the path anyway
                link.symlink_to(self.slave_path)

    def encode(self, frame: SimFrame) -> bytes:
        if self.fmt == "nnmi":
            from firmware_bridge.nbiot import format_nnmi

            body = link_body(frame)
            if frame.corrupt is not None:
                body = frame.apply_corruption(b"\x00" + body + b"\x00")[1:-1]
            return format_nnmi(body)
        from firmware_bridge.framing import encode_frame

        return frame.apply_corruption(encode_frame(frame.device_id, frame.payload))

    def offer(self, frame: SimFrame) -> None:
        data = self.encode(frame)
        try:
            n = os.write(self.fd, data)
        except BlockingIOError:
            self.stats.dropped += 1
            return
        except OSError:
            self.stats.errors += 1
            return
        if n < len(data):  # partial write: the rest is lost, the receiver's CRC will reject the stub
            self.stats.dropped += 1
        else:
            self.stats.sent += 1

    async def run(self) -> None:
        return

    async def close(self) -> None:
        for fd in (self.fd, self.slave_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self.slave_fd >= 0:  # our pty is gone: so is its link
            link = self.outdir / "serial"
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link) == self.slave_path:
                    link.unlink()
        self.fd = self.slave_fd = -1


class MqttSink(Sink):
    """Publishes through :class:`firmware_bridge.transports.mqtt.MqttTransport` (reconnects with jittered
    backoff; QoS 0; bounded queue in front; a publish that cannot complete within ``timeout_s`` is counted
    in ``errors``)."""

    name = "mqtt"

    def __init__(self, cfg: Any, keys: dict[str, tuple[str, str, str]]) -> None:
        super().__init__(queue_size=cfg.queue_size)
        self.cfg = cfg
        self.keys = keys
        self._fcnt: dict[str, int] = {}
        self._last_phy: dict[str, tuple[int, bytes]] = {}
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()

    async def open(self) -> None:
        from firmware_bridge.transports.mqtt import MqttTransport

        transport = MqttTransport(
            self.cfg.host,
            self.cfg.port,
            client_id=f"vigil-sim-{os.getpid()}-{id(self) % 100_000}",
            topics=[],
            username=self.cfg.username,
            password=self.cfg.password,
            clean_session=True,
            timeout=self.cfg.timeout_s,
        )
        self._client = await self._stack.enter_async_context(transport)
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                await transport.wait_connected()
        except TimeoutError as exc:
            await self._stack.aclose()
            raise OutputError(
                f"mqtt output: cannot connect to {self.cfg.host}:{self.cfg.port} within "
                f"{self.cfg.timeout_s} s ({transport.last_error or 'no answer'})"
            ) from exc

    def messages(self, frame: SimFrame) -> list[tuple[str, bytes]]:
        """The (topic, payload) pairs one frame becomes on MQTT."""
        out: list[tuple[str, bytes]] = []
        if self.cfg.lorawan and frame.device_id in self.keys:
            out.append((f"vigil/v1/lora/{frame.gateway_id}/rx", frame.apply_corruption(self._phy(frame))))
        if frame.corrupt is not None:
            self.stats.skipped_corrupt += 1
            return out
        if self.cfg.vigil:
            out.append((f"vigil/v1/dev/{frame.kind.value}/{frame.device_id}/up", frame.payload))
        if self.cfg.chirpstack:
            from firmware_bridge.chirpstack import build_uplink

            out.append(
                build_uplink(
                    frame.device_id,
                    frame.seq,
                    10,
                    frame.payload,
                    time=frame.stamp,
                    application_id=self.cfg.chirpstack_application_id,
                    gateway_id=_gw_eui(frame.gateway_id),
                    tags={"kind": frame.kind.value},
                )
            )
        return out

    def _phy(self, frame: SimFrame) -> bytes:
        from firmware_bridge.lorawan import LoRaWANKeys, build_uplink

        last = self._last_phy.get(frame.device_id)
        if frame.fault == "duplicate" and last is not None and last[0] == frame.seq:
            return last[1]  # the same radio frame heard by a second gateway
        fcnt = self._fcnt.get(frame.device_id, -1) + 1
        self._fcnt[frame.device_id] = fcnt
        addr, nwk, app = self.keys[frame.device_id]
        phy = build_uplink(LoRaWANKeys.from_hex(addr, nwk, app, frame.device_id), fcnt, 10, frame.payload)
        self._last_phy[frame.device_id] = (frame.seq, phy)
        return phy

    async def handle(self, frame: SimFrame) -> None:
        from firmware_bridge.errors import TransportError

        for topic, payload in self.messages(frame):
            try:
                await self._client.publish(topic, payload, qos=0, timeout=self.cfg.timeout_s)
                self.stats.sent += 1
            except TransportError as exc:
                self.stats.errors += 1
                log.warning("mqtt publish to %s failed: %s", topic, exc)

    async def close(self) -> None:
        await super().close()

    async def aclose(self) -> None:
        await self._stack.aclose()


class HttpSink(Sink):
    """CTWing ``dataReport`` pushes POSTed with httpx (bounded queue, timeout, errors counted)."""

    name = "http"

    def __init__(self, cfg: Any) -> None:
        super().__init__(queue_size=cfg.queue_size)
        self.cfg = cfg
        self._client: Any = None

    async def open(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.cfg.token}"} if self.cfg.token else {}
        self._client = httpx.AsyncClient(timeout=self.cfg.timeout_s, headers=headers)

    async def handle(self, frame: SimFrame) -> None:
        import httpx

        from firmware_bridge.operator_push import build_ctwing_data_report

        if frame.corrupt is not None:
            self.stats.skipped_corrupt += 1
            return
        body = build_ctwing_data_report(_imei(frame.device_id), frame.device_id, frame.payload, frame.stamp)
        try:
            r = await self._client.post(
                self.cfg.url, content=body, headers={"Content-Type": "application/json"}
            )
            if r.status_code >= 300:
                self.stats.errors += 1
            else:
                self.stats.sent += 1
        except httpx.HTTPError as exc:
            self.stats.errors += 1
            log.warning("CTWing push to %s failed: %s", self.cfg.url, type(exc).__name__)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _imei(device_id: str) -> str:
    """A stable synthetic 15-digit IMEI for a device id (the test TAC 35-000000 prefix)."""
    return "35000000" + f"{int(device_id, 16) % 10**7:07d}"


def _gw_eui(gateway_id: str) -> str:
    return binascii.hexlify(gateway_id.encode()[:8].ljust(8, b"\0")).decode()


@dataclass
class Outputs:
    """The sinks of one run, opened and closed together."""

    sinks: list[Sink] = field(default_factory=list)

    def offer(self, frame: SimFrame) -> None:
        for s in self.sinks:
            s.offer(frame)

    def stats(self) -> dict[str, dict[str, int]]:
        return {s.name: vars(s.stats).copy() for s in self.sinks}


def build_outputs(cfg: Any, outdir: Path, keys: dict[str, tuple[str, str, str]]) -> Outputs:
    """Sinks for an :class:`~simulators.config.Outputs` section."""
    sinks: list[Sink] = []
    if cfg.files.enabled:
        sinks.append(FilesSink(outdir))
    if cfg.serial.enabled:
        sinks.append(SerialSink(outdir, cfg.serial.path, cfg.serial.format))
    if cfg.mqtt.enabled:
        sinks.append(MqttSink(cfg.mqtt, keys))
    if cfg.http.enabled:
        if not cfg.http.url:
            raise OutputError("outputs.http.url is required when outputs.http.enabled = true")
        sinks.append(HttpSink(cfg.http))
    return Outputs(sinks)
