"""Outputs against real receivers: a pseudo-terminal read by the framing decoder, a real Mosquitto broker
(our payloads, ChirpStack uplink JSON, LoRaWAN PHYPayloads decrypted with the per-device keys of
devices.csv), and a real HTTP server receiving CTWing pushes.

Formats: SLIP RFC 1055 + docs/framing.md; Quectel BC95/BC28 +NNMI URCs; ChirpStack v4 integration events;
LoRaWAN 1.0.x (AES-CTR payload, AES-CMAC MIC); CTWing dataReport push (REFERENCES.md).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
from collections import Counter
from pathlib import Path

import aiomqtt
import pytest

from firmware_bridge import chirpstack, lorawan, operator_push
from firmware_bridge.errors import DecodeError
from firmware_bridge.framing import FrameDecoder
from firmware_bridge.kernel.clock import AcceleratedClock
from firmware_bridge.kernel.records import DeviceKind as K
from firmware_bridge.nbiot import UrcDecoder
from simulators.config import parse_config
from simulators.fleet import Fleet
from simulators.outputs import SerialSink, link_body
from simulators.runner import run_simulation
from tests.aio import cancel_and_wait

T0 = 1_780_272_000.0


def read_all(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


@pytest.mark.parametrize("fmt", ["slip", "nnmi"])
async def test_serial_pty_carries_link_frames(tmp_path: Path, fmt: str) -> None:
    fleet = Fleet.build({K.WRISTBAND: 8, K.SMOKE_ALARM: 4}, seed=21)
    from simulators.faults import LinkFaultRates

    fleet.fault_rates = LinkFaultRates(corrupt=0.1)
    frames = list(fleet.run(T0, 1800.0))
    sink = SerialSink(tmp_path, None, fmt)
    await sink.open()
    try:
        path = (tmp_path / "serial_ports.txt").read_text().strip()
        assert path == sink.slave_path and path.startswith("/dev/pts/")
        reader = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)  # what the gateway opens
        try:
            got: list[tuple[str, bytes]] = []
            for f in frames:
                sink.offer(f)
                data = read_all(reader)
                if fmt == "slip":
                    dec = FrameDecoder()
                    got.extend((x.device_id, x.payload) for x in dec.feed(data))
                else:
                    for ev in UrcDecoder().feed(data):
                        body = ev.data  # type: ignore[union-attr]
                        if len(body) >= 10 and link_body_ok(body):
                            got.append((body[:8].hex(), body[8:-2]))
        finally:
            os.close(reader)
    finally:
        await sink.close()
    want = [(f.device_id, f.payload) for f in frames if f.corrupt is None]
    assert got == want and len(want) < len(frames)
    assert sink.stats.sent == len(frames) and sink.stats.dropped == 0


def link_body_ok(body: bytes) -> bool:
    import binascii

    return binascii.crc_hqx(body, 0xFFFF) == 0


async def test_serial_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    fleet = Fleet.build({K.WRISTBAND: 200}, seed=22)
    frames = list(fleet.run(T0, 6 * 3600.0))
    sink = SerialSink(tmp_path, None, "slip")
    await sink.open()
    try:
        for f in frames:  # nobody reads: the pty buffer fills, writes must not block
            sink.offer(f)
    finally:
        await sink.close()
    assert sink.stats.dropped > 0 and sink.stats.sent + sink.stats.dropped == len(frames)


def test_nnmi_body_is_the_link_body() -> None:
    fleet = Fleet.build({K.MANHOLE: 2}, seed=2)
    f = next(iter(fleet.run(T0, 86400.0)))
    body = link_body(f)
    assert body[:8].hex() == f.device_id and body[8:-2] == f.payload and link_body_ok(body)


def config(tmp_path: Path, **outputs: object) -> object:
    return parse_config(
        {
            "seed": 31,
            "start": T0,
            "duration": "20m",
            "speedup": 7200.0,
            "devices": {"manhole": 10, "smoke_alarm": 10, "wristband": 20},
            "scenarios": {"wristband": {"sos": 20.0}},
            "faults": {"corrupt": 0.05, "duplicate": 0.1},
            "outputs": outputs,
        }
    )


async def test_mqtt_our_payloads_chirpstack_and_lorawan(tmp_path: Path, mosquitto) -> None:  # type: ignore[no-untyped-def]
    app = f"sim-{os.getpid()}-{id(tmp_path) % 100000}"
    cfg = config(
        tmp_path,
        mqtt={
            "enabled": True,
            "host": mosquitto.host,
            "port": mosquitto.port,
            "vigil": True,
            "chirpstack": True,
            "chirpstack_application_id": app,
            "lorawan": True,
        },
    )
    got: list[tuple[str, bytes]] = []
    ready = asyncio.Event()
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as sub:
        await sub.subscribe("vigil/v1/dev/#")
        await sub.subscribe("vigil/v1/lora/#")
        await sub.subscribe(f"application/{app}/#")

        async def collect() -> None:
            async for msg in sub.messages:
                got.append((str(msg.topic), bytes(msg.payload)))
                if len(got) >= expected[0]:
                    ready.set()

        expected = [10**9]
        task = asyncio.create_task(collect(), name="collect")
        try:
            summary = await run_simulation(cfg, tmp_path, progress=None)  # type: ignore[arg-type]
            frames = [json.loads(x) for x in (tmp_path / "frames.jsonl").read_text().splitlines()]
            with (tmp_path / "devices.csv").open() as fh:
                devices = {r["device_id"]: r for r in csv.DictReader(fh)}
            ours = [f for f in frames if f["device_id"] in devices]
            n_corrupt = sum(1 for f in ours if f.get("corrupt"))
            expected[0] = 2 * (len(ours) - n_corrupt) + len(ours)
            if len(got) >= expected[0]:
                ready.set()
            async with asyncio.timeout(20):
                await ready.wait()
        finally:
            await cancel_and_wait(task)
    assert summary["outputs"]["mqtt"]["skipped_corrupt"] == n_corrupt > 0
    clock = AcceleratedClock.load(tmp_path / "clock.json")
    assert clock.sim_epoch == T0 and clock.speedup == 7200.0
    by_kind = Counter(t.split("/")[2] for t, _ in got)
    # our payloads: exactly the non-corrupt frames, in order
    vigil = [(t.split("/")[4], p) for t, p in got if t.startswith("vigil/v1/dev/")]
    assert vigil == [(f["device_id"], bytes.fromhex(f["payload"])) for f in ours if not f.get("corrupt")]
    # ChirpStack JSON: parses with the gateway's parser and carries the same bytes
    cs = [chirpstack.parse_uplink(p) for t, p in got if t.startswith("application/")]
    assert [(u.dev_eui, u.data) for u in cs] == vigil
    # LoRaWAN: decrypts with the keys of devices.csv; corrupt frames fail the MIC; duplicates are replays
    last: dict[str, int] = {}
    ok: list[tuple[str, bytes]] = []
    errors: Counter[str] = Counter()
    for t, phy in got:
        if not t.startswith("vigil/v1/lora/"):
            continue
        dev_addr = lorawan.parse_phy_payload(phy).dev_addr_hex if len(phy) > 12 else ""
        match = [d for d, r in devices.items() if r["dev_addr"] == dev_addr]
        if not match:
            errors["dev_addr"] += 1
            continue
        r = devices[match[0]]
        keys = lorawan.LoRaWANKeys.from_hex(r["dev_addr"], r["nwk_skey"], r["app_skey"], match[0])
        try:
            up = lorawan.decode_uplink(phy, keys, last.get(match[0]))
        except DecodeError as exc:
            errors[exc.reason] += 1
            continue
        last[match[0]] = up.fcnt
        ok.append((match[0], up.payload))
    firsts = [
        (f["device_id"], bytes.fromhex(f["payload"]))
        for f in ours
        if not f.get("corrupt") and f.get("fault") != "duplicate"
    ]
    assert ok == firsts
    assert sum(errors.values()) == len(ours) - len(firsts) and by_kind["lora"] == len(ours)


async def test_http_ctwing_pushes(tmp_path: Path) -> None:
    bodies: list[bytes] = []
    auth: set[str] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                hdr = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                auth.add(hdr.get("authorization", ""))
                bodies.append(await reader.readexactly(int(hdr["content-length"])))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = config(
            tmp_path, http={"enabled": True, "url": f"http://127.0.0.1:{port}/ctwing", "token": "t0k"}
        )
        summary = await run_simulation(cfg, tmp_path, progress=None)  # type: ignore[arg-type]
    finally:
        server.close()
        await server.wait_closed()
    frames = [json.loads(x) for x in (tmp_path / "frames.jsonl").read_text().splitlines()]
    clean = [f for f in frames if not f.get("corrupt")]
    msgs = [operator_push.parse_ctwing(b) for b in bodies]
    assert [(m.device_id, m.payload) for m in msgs] == [
        (f["device_id"], bytes.fromhex(f["payload"])) for f in clean
    ]
    assert all(m.message_type == "dataReport" and m.imei and len(m.imei) == 15 for m in msgs)
    assert auth == {"Bearer t0k"}
    assert summary["outputs"]["http"]["sent"] == len(clean) and summary["outputs"]["http"]["errors"] == 0


async def test_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    from simulators.errors import OutputError
    from tests.servers import free_port

    port = free_port()
    cfg = config(tmp_path, mqtt={"enabled": True, "host": "127.0.0.1", "port": port, "timeout_s": 0.5})
    with pytest.raises(OutputError, match=f"cannot connect to 127.0.0.1:{port}"):
        await run_simulation(cfg, tmp_path, progress=None)  # type: ignore[arg-type]


def test_http_output_needs_a_url(tmp_path: Path) -> None:
    from simulators.errors import OutputError
    from simulators.outputs import build_outputs

    cfg = config(tmp_path, http={"enabled": True})
    with pytest.raises(OutputError, match=r"outputs\.http\.url"):
        build_outputs(cfg.outputs, tmp_path, {})  # type: ignore[attr-defined]


async def test_paced_run_offers_frames_on_the_shared_clock(tmp_path: Path) -> None:
    from simulators.outputs import Sink

    seen: list[tuple[float, float]] = []

    class Probe(Sink):
        name = "probe"

        def offer(self, frame) -> None:  # type: ignore[no-untyped-def]
            clock = AcceleratedClock.load(tmp_path / "clock.json")
            seen.append((clock.now(), frame.time))

        async def run(self) -> None:
            return

    cfg = config(tmp_path)
    summary = await run_simulation(cfg, tmp_path, progress=None, extra_sinks=[Probe()])  # type: ignore[arg-type]
    assert len(seen) == summary["frames_delivered"] > 0
    # never early; typically late by a few real milliseconds (x7200: tens of simulated seconds)
    lag = [now - t for now, t in seen]
    assert min(lag) >= 0.0
    assert sorted(lag)[len(lag) // 2] < 1200.0  # 1/6 s real: generous for a loaded CI machine


async def test_interrupted_run_leaves_consistent_truth(tmp_path: Path) -> None:
    from simulators.outputs import Sink
    from simulators.truth import load_truth

    enough = asyncio.Event()
    times: list[float] = []

    class Probe(Sink):
        name = "probe"

        def offer(self, frame) -> None:  # type: ignore[no-untyped-def]
            times.append(frame.time)
            if len(times) >= 40:
                enough.set()

        async def run(self) -> None:
            return

    cfg = parse_config(
        {
            "seed": 5,
            "start": T0,
            "duration": "6h",
            "speedup": 3600.0,
            "devices": {"wristband": 30},
            "scenarios": {"wristband": {"sos": 50.0}},
        }
    )
    task = asyncio.create_task(
        run_simulation(cfg, tmp_path, progress=None, extra_sinks=[Probe()]), name="sim"
    )
    async with asyncio.timeout(20):
        await enough.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    summary = json.loads((tmp_path / "summary.json").read_text())
    stopped = T0 + summary["duration_s"]
    assert summary["interrupted"] is True and 0 < summary["duration_s"] < 6 * 3600
    assert summary["frames_delivered"] == len(times) and max(times) <= stopped
    truth = load_truth(tmp_path / "truth.jsonl")
    assert truth and all(r.start < stopped and r.end <= stopped + 1e-3 for r in truth)  # ms rounding
    assert len((tmp_path / "frames.jsonl").read_text().splitlines()) == len(times)
