"""A stopped simulator run ends even when its MQTT output lost the cancel (firmware_bridge.kernel.aio).

Python 3.11's ``asyncio.wait_for`` drops a cancel that lands as the awaited thing finishes (CPython
gh-86296), and aiomqtt awaits its CONNACK, SUBACK, PUBACK and disconnect that way. Here the MQTT sink's
publish (and, for the transport, aiomqtt's connect) swallows its first cancel the same way and returns
as if the broker had answered: the run's TaskGroup (the transport's) would wait for the task forever.
The repeated cancel ends it; a run whose tasks take their cancel stops at once, as before.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.kernel import aio
from firmware_bridge.transports.mqtt import MqttTransport
from simulators.config import FleetConfig, parse_config
from simulators.runner import run_simulation
from tests.aio import cancel_and_wait

T0 = 1_780_272_000.0
#: the repeat, shortened: a stop with a lost cancel must end within STOP_BOUND_S
AGAIN_S = 0.2
STOP_BOUND_S = 5.0


def paced_mqtt_run(host: str, port: int) -> FleetConfig:
    """Long enough (6 simulated hours at x600: 36 s) to be stopped while it publishes."""
    return parse_config(
        {
            "seed": 7,
            "start": T0,
            "duration": "6h",
            "speedup": 600.0,
            "devices": {"manhole": 5, "smoke_alarm": 5, "wristband": 10},
            "outputs": {"files": {"enabled": False}, "mqtt": {"enabled": True, "host": host, "port": port}},
        }
    )


def publish_losing_one_cancel(
    first: asyncio.Event, stubborn: list[asyncio.Task[Any]], lost: list[str], *, lose: bool
) -> Any:
    """MqttTransport.publish whose first call waits for a PUBACK and, if ``lose``, swallows the cancel."""
    real = MqttTransport.publish

    async def publish(self: MqttTransport, topic: str, payload: bytes | str, qos: int = 1, **kw: Any) -> None:
        if first.is_set():
            return await real(self, topic, payload, qos, **kw)
        task = asyncio.current_task()
        assert task is not None
        stubborn.append(task)
        first.set()
        try:
            await asyncio.sleep(3600)  # the PUBACK wait the stop lands in
        except asyncio.CancelledError:
            if not lose:
                raise
            lost.append(task.get_name())  # as wait_for returning the result that arrived with the cancel

    return publish


async def stop_run(
    tmp_path: Path, mosquitto: Any, monkeypatch: pytest.MonkeyPatch, *, lose: bool
) -> tuple[asyncio.Task[dict[str, Any]], float, list[str]]:
    """Start a paced MQTT run, stop it in its first publish; the run task, seconds to stop, lost cancels."""
    first, stubborn, lost = asyncio.Event(), [], []  # type: ignore[var-annotated]
    monkeypatch.setattr(MqttTransport, "publish", publish_losing_one_cancel(first, stubborn, lost, lose=lose))
    cfg = paced_mqtt_run(mosquitto.host, mosquitto.port)
    run = asyncio.create_task(run_simulation(cfg, tmp_path, progress=None), name="simulate")
    try:
        async with asyncio.timeout(30):
            await first.wait()
        t0 = time.monotonic()
        run.cancel()  # Ctrl-C on `vigil simulate`, the demo stopping its simulator
        done, _ = await asyncio.wait({run}, timeout=STOP_BOUND_S)
        took = time.monotonic() - t0
        assert done, f"the run did not stop within {STOP_BOUND_S} s of its cancel (lost: {lost})"
    finally:
        for t in stubborn:  # the old code: end the stuck sink so the run can end
            t.cancel()
        await cancel_and_wait(run, errors=False)
    return run, took, lost


async def test_a_run_whose_mqtt_publish_lost_the_cancel_stops(
    tmp_path: Path,
    mosquitto: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aio, "RECANCEL_AFTER_S", AGAIN_S)
    monkeypatch.setattr(aio, "RECANCEL_EVERY_S", AGAIN_S)
    run, took, lost = await stop_run(tmp_path, mosquitto, monkeypatch, lose=True)
    assert lost == ["sink-mqtt"]
    assert run.cancelled()
    assert AGAIN_S <= took < STOP_BOUND_S  # ended by the repeated cancel
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["outputs"]["mqtt"]["sent"] >= 0


async def test_a_normal_stop_is_not_slowed(
    tmp_path: Path,
    mosquitto: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Repeats at the defaults (5 s, then every 2 s): a task that takes its cancel ends long before."""
    run, took, lost = await stop_run(tmp_path, mosquitto, monkeypatch, lose=False)
    assert lost == [] and run.cancelled()
    assert took < 1.0 < aio.RECANCEL_AFTER_S
    assert json.loads((tmp_path / "summary.json").read_text())["interrupted"] is True


class ConnectLosingOneCancel:
    """An aiomqtt client whose connect is stopped as the CONNACK arrives: the cancel is lost, the
    connection is up, and the message stream then waits for a message that never comes."""

    def __init__(self, *, lose: bool) -> None:
        self.connecting = asyncio.Event()
        self.lose = lose
        self.lost = 0

    async def __aenter__(self) -> ConnectLosingOneCancel:
        self.connecting.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if not self.lose:
                raise
            self.lost += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    @property
    def messages(self) -> AsyncIterator[Any]:
        async def forever() -> AsyncIterator[Any]:
            await asyncio.Event().wait()
            yield None

        return forever()


@pytest.mark.parametrize("lose", [True, False])
async def test_the_transport_closes_when_its_connect_lost_the_cancel(
    monkeypatch: pytest.MonkeyPatch, lose: bool
) -> None:
    monkeypatch.setattr(aio, "RECANCEL_AFTER_S", AGAIN_S if lose else 5.0)
    monkeypatch.setattr(aio, "RECANCEL_EVERY_S", AGAIN_S if lose else 2.0)
    client = ConnectLosingOneCancel(lose=lose)
    transport = MqttTransport("127.0.0.1", 9, client_id="vigil-sim-test", topics=[])
    monkeypatch.setattr(transport, "_client_for_attempt", lambda: client)
    inner: list[asyncio.Task[None]] = []

    async def use() -> None:
        async with transport:
            assert transport._task is not None
            inner.append(transport._task)
            await client.connecting.wait()
            await asyncio.sleep(0)  # the connection loop is inside connect

    task = asyncio.create_task(use(), name="sink-open-close")
    try:
        t0 = time.monotonic()
        done, _ = await asyncio.wait({task}, timeout=STOP_BOUND_S)
        took = time.monotonic() - t0
        assert done, f"the transport did not close within {STOP_BOUND_S} s (lost {client.lost})"
    finally:
        for t in inner:
            t.cancel()
        await cancel_and_wait(task)
    assert client.lost == (1 if lose else 0)
    assert took < STOP_BOUND_S if lose else took < 1.0
    assert inner[0].cancelled()
