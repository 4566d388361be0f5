"""Gateway kill -9 on its Semtech UDP source: every frame the gateway accepted is stored exactly once.

UDP gives the device no acknowledgement from the gateway: the PUSH_ACK of the packet-forwarder protocol
(Lora-net/packet_forwarder PROTOCOL.TXT) only says the datagram arrived, and ``edge/sources/udp.py`` sends
it on receipt, before decoding. So "accepted" is what the gateway committed to its outbox (measured as in
``tests/edge/test_daemon_kill9.py``: in the outbox, or already stored by the cloud). A frame sent while the
gateway is dead or killed before its commit is simply not accepted; a device's retransmission (the same
PHYPayload, the same FCnt) may then deliver it, or the frame-counter check refuses it as a replay when a
later frame of that device was accepted meanwhile (counted in the ledger's extra figures).

LoRaWAN ABP devices (keys in ``devices.csv``) send encrypted frames in FCnt order through a real
``vigil gateway`` subprocess, which uplinks to a real HTTP cloud; about one datagram in ten is repeated (as
NbTrans repetitions do) and accepted frames are re-sent after restarts, which the gateway must recognise.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.sources.devices import load_devices
from edge.sources.lora import LoRaWANSessions
from firmware_bridge import semtech_udp
from firmware_bridge.errors import ReplayError
from firmware_bridge.lorawan import LoRaWANKeys, build_uplink
from tests.edge.helpers import device_id, manhole_payload
from tests.edge.test_sources import write_devices
from tests.faults.gateway_kit import (
    Daemon,
    FaultyCloud,
    Key,
    accepted_keys,
    free_udp_port,
    http_uplink,
    load,
    poll,
    waiting,
    write_config,
)
from tests.faults.ledger import Ledger, scale
from tests.servers import free_port

GATEWAY_EUI = bytes.fromhex("b827ebfffe000001")


def device_keys(i: int) -> LoRaWANKeys:
    return LoRaWANKeys(0x26010000 + i, bytes([i % 251, 1]) * 8, bytes([i % 251, 2]) * 8, device_id(i))


@pytest.mark.parametrize("seed", [21])
async def test_kill_9_loses_no_accepted_udp_frame(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    kills = scale(2, 40)
    n_dev, per_round = 100, scale(600, 2500)
    keys = [device_keys(i) for i in range(n_dev)]
    devices = write_devices(tmp_path / "devices.csv", [(k.dev_eui or "", "manhole", k) for k in keys])
    # frame (device, FCnt) -> PHYPayload; devices transmit in FCnt order, round robin
    order: list[Key] = [
        (device_id(i), f) for f in range(1, 1 + (kills + 1) * per_round // n_dev) for i in range(n_dev)
    ]
    phy = {
        (device_id(i), f): build_uplink(keys[i], f, 10, manhole_payload(i, f))
        for i in range(n_dev)
        for f in range(1, 1 + len(order) // n_dev)
    }
    ledger = Ledger("gateway_kill9_udp")
    cloud = FaultyCloud(port=free_port())
    await cloud.start()
    metrics_port, udp_port = free_port(), free_udp_port()
    config = write_config(
        tmp_path / "gateway.toml",
        gateway_id="gw-faults-udp",
        data_dir=tmp_path / "data",
        sources=f'[sources.udp]\nname = "pf"\nbind = "127.0.0.1"\nport = {udp_port}',
        uplink=http_uplink(cloud.url, backoff_initial_s=0.05, backoff_max_s=0.2),
        metrics_port=metrics_port,
        extra=f'devices_file = "{devices}"',
        # frames wait up to 200 ms for their batch while the frame counters are saved every 50 ms: a kill
        # between the two finds counters of frames that were never committed (edge/sources/lora.py)
        detection="batch_window_ms = 200\nsnapshot_interval_s = 0.05",
    )
    outbox = tmp_path / "data" / "outbox.sqlite3"
    daemon = Daemon(config, metrics_port, tmp_path / "daemon.log", "pf")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    token = 0
    replays_refused = 0  # frames refused as replays after a restart (never accepted; a later FCnt was)

    async def transmit(todo: list[Key]) -> None:
        """The packet forwarder: PUSH_DATA datagrams of 1-8 rxpk; one in ten repeated (NbTrans)."""
        nonlocal token
        pos = 0
        while pos < len(todo):
            n = rng.randint(1, 8)
            part = todo[pos : pos + n]
            pos += n
            token = (token + 1) & 0xFFFF
            dgram = semtech_udp.build_push_data(
                token, GATEWAY_EUI, [semtech_udp.Rxpk(data=phy[k]) for k in part]
            )
            for _ in range(2 if rng.random() < 0.1 else 1):
                with contextlib.suppress(OSError):  # ICMP port unreachable while the gateway is dead
                    await loop.sock_sendto(sock, dgram, ("127.0.0.1", udp_port))
                ledger.sent += len(part)
            await asyncio.sleep(rng.random() * 0.004)  # radio pacing, not synchronisation

    def all_accepted(keys: set[Key]) -> Callable[[], bool]:
        return lambda: keys <= accepted_keys(outbox, cloud.stored())

    async def retransmit_takeable() -> list[Key]:
        """After a restart, devices first retransmit their frames above their last accepted FCnt: those
        can still be accepted (up to 3 tries: a datagram may be dropped by a full socket buffer). What is
        still refused was refused by a frame counter ahead of what the gateway committed."""
        acc = accepted_keys(outbox, cloud.stored())
        last: dict[str, int] = {}
        for d, f in acc:
            last[d] = max(last.get(d, 0), f)
        takeable = {k for k in order[:sent_upto] if k not in acc and k[1] > last.get(k[0], 0)}
        left = sorted(takeable, key=lambda k: (k[1], k[0]))  # FCnt order
        for _ in range(3):
            if not left:
                break
            await transmit(left)
            with contextlib.suppress(AssertionError):
                await poll(all_accepted(set(left)), 5, "retransmissions accepted")
            acc = accepted_keys(outbox, cloud.stored())
            left = [k for k in left if k not in acc]
        return left

    sent_upto = 0
    stranded: list[Key] = []
    try:
        for rnd in range(kills + 1):
            await daemon.start()
            stranded += await retransmit_takeable()
            acc = accepted_keys(outbox, cloud.stored())
            # then the rest of what was not accepted (refused as replays: a later FCnt was accepted), and
            # new frames, with repeats of accepted ones (same bytes, same FCnt) among them
            retrans = [k for k in order[:sent_upto] if k not in acc]
            new = order[sent_upto : sent_upto + per_round]
            sent_upto += len(new)
            todo = retrans + new
            for k in rng.sample(sorted(acc), min(40, len(acc))):
                todo.insert(rng.randrange(len(todo) + 1), k)
            if rnd == kills:  # last run: no kill
                await transmit(todo)
                stranded += await retransmit_takeable()
                break
            cut = rng.randrange(len(todo) // 3, len(todo))
            await transmit(todo[:cut])
            await asyncio.sleep(rng.random() * 0.1)  # kill at a random moment, mostly inside a batch window
            before = accepted_keys(outbox, cloud.stored())
            daemon.kill9()
            after = accepted_keys(outbox, cloud.stored())
            assert before <= after, f"{len(before - after)} accepted frame(s) lost by kill -9"
            await transmit(todo[cut : cut + rng.randrange(0, 100)])  # sent while the gateway is dead: lost
        assert not stranded, (
            f"{len(stranded)} frame(s) never stored were refused on retransmission (a frame counter ahead "
            f"of the outbox): {stranded[:5]}"
        )
        await poll(
            lambda: not waiting(outbox) and daemon.proc is not None,
            120,
            "the outbox drained to the cloud",
            0.5,
        )
        replays_refused = int(
            await daemon.metric('vigil_gateway_rejects_total{source="pf",reason="replay"}') or 0
        )
        assert daemon.stop() == 0
        stored = cloud.stored()
        acc = accepted_keys(outbox, stored)
        ledger.kills, ledger.restarts = daemon.kills, daemon.starts - 1
        ledger.reconcile(acc, stored.elements())
        ledger.extra.update(
            frames=len(order),
            never_accepted=len(set(order[:sent_upto]) - acc),
            never_accepted_means="sent while the gateway was dead or killed before its commit and refused as "
            "a replay when retransmitted after a later FCnt of its device had been accepted (LoRaWAN rule)",
            refused_although_takeable=len(stranded),
            replays_refused_last_run=replays_refused,
            accepted_means="committed to the outbox (no application ack on UDP; PUSH_ACK is sent on receipt)",
            load_average_1m_end=load(),
        )
        print(ledger.summary(), ledger.extra)
        assert daemon.traceback_free()
        ledger.check()
    finally:
        sock.close()
        daemon.cleanup()
        await cloud.stop()


def test_frame_counter_is_persisted_only_once_the_frame_is_committed(tmp_path: Path) -> None:
    """Regression (found while building the scenario above): the LoRaWAN counters saved with the engine
    snapshot ran ahead of the outbox; a kill -9 between a snapshot and the commit made the restarted
    gateway refuse the device's retransmission of a frame it never stored, as a replay."""
    k = device_keys(7)
    devices = load_devices(write_devices(tmp_path / "devices.csv", [(k.dev_eui or "", "manhole", k)]))
    phy = build_uplink(k, 5, 10, manhole_payload(7, 5))
    sessions = LoRaWANSessions(devices)
    dev, payload, counter = sessions.decode_counted(phy)  # decoded: the frame waits in the queue
    with pytest.raises(ReplayError):
        sessions.decode_counted(phy)  # while the gateway runs, a repetition is a replay
    restarted = LoRaWANSessions(devices)
    restarted.restore(sessions.snapshot())  # a snapshot now, then kill -9 before the commit
    assert restarted.decode_counted(phy)[:2] == (dev, payload)  # the retransmission is taken
    sessions.confirm(counter)  # the pipeline committed the frame
    later = LoRaWANSessions(devices)
    later.restore(sessions.snapshot())
    with pytest.raises(ReplayError):
        later.decode_counted(phy)  # a replay of a committed frame is still refused after a restart
