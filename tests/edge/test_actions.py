"""Local life-safety actions (edge/actions.py): command, buzzer file, SMS over AT commands, rate limits."""

from __future__ import annotations

import asyncio
import os
import select
import sys
import threading
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.actions import ActionRunner, AtModem, sms_text
from edge.config import ActionSection
from edge.metrics import GatewayMetrics
from firmware_bridge.kernel.events import AlertPhase, EventType
from tests.edge.helpers import alert


class FakeModem(threading.Thread):
    """A GSM module on the far end of a pty, answering as 3GPP TS 27.005 text mode describes:
    ``AT+CMGF=1`` -> OK; ``AT+CMGS="<da>"`` -> ``> `` prompt; text + Ctrl-Z -> ``+CMGS: <mr>`` then OK."""

    def __init__(self, fail_cmgs: bool = False) -> None:
        super().__init__(daemon=True)
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.fail_cmgs = fail_cmgs
        self.messages: list[tuple[str, str]] = []
        self.commands: list[bytes] = []
        self._halt = threading.Event()
        self._number = ""

    def run(self) -> None:
        buf = b""
        while not self._halt.is_set():
            r, _, _ = select.select([self.master], [], [], 0.05)
            if not r:
                continue
            try:
                buf += os.read(self.master, 1024)
            except OSError:
                return
            while True:
                if self._number and b"\x1a" in buf:
                    text, buf = buf.split(b"\x1a", 1)
                    self.messages.append((self._number, text.decode()))
                    self._number = ""
                    os.write(self.master, b"\r\n+CMGS: 12\r\n\r\nOK\r\n")
                    continue
                if not self._number and b"\r" in buf:
                    line, buf = buf.split(b"\r", 1)
                    self.commands.append(line)
                    if line == b"AT+CMGF=1":
                        os.write(self.master, b"\r\nOK\r\n")
                    elif line.startswith(b"AT+CMGS="):
                        if self.fail_cmgs:
                            os.write(self.master, b"\r\n+CMS ERROR: 330\r\nERROR\r\n")
                        else:
                            self._number = line[9:-1].decode()
                            os.write(self.master, b"\r\n> ")
                    else:
                        os.write(self.master, b"\r\nERROR\r\n")
                    continue
                break

    def close(self) -> None:
        self._halt.set()
        self.join(2)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def modem() -> Iterator[FakeModem]:
    m = FakeModem()
    m.start()
    yield m
    m.close()


def count(m: GatewayMetrics, action: str, result: str) -> float:
    return (
        m.registry.get_sample_value("vigil_gateway_actions_total", {"action": action, "result": result})
        or 0.0
    )


async def test_sms_through_at_commands(modem: FakeModem) -> None:
    async with AtModem(modem.path, 115200, 5.0) as at:
        mr = await at.send_sms("+8613800000000", sms_text(alert(1)))
    assert mr == 12
    assert modem.commands == [b"AT+CMGF=1", b'AT+CMGS="+8613800000000"']
    [(number, text)] = modem.messages
    assert number == "+8613800000000" and text.startswith("VIGIL HIGH FIRE device 70b3d57ed0000001")


async def test_sms_error_is_reported_not_raised_through_the_runner() -> None:
    m = FakeModem(fail_cmgs=True)
    m.start()
    try:
        metrics = GatewayMetrics()
        act = ActionSection(
            name="sms", type="sms", when="always", port=m.path, numbers=["+8613800000000"], timeout_s=5
        )
        runner = ActionRunner([act], metrics)
        await runner._consider(act, alert(1))
        assert count(metrics, "sms", "failed") == 1 and not runner.fired
    finally:
        m.close()


async def test_command_gets_alert_env_and_is_rate_limited(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    script = (
        "import os,sys; "
        "open(sys.argv[1],'a').write(os.environ['VIGIL_ALERT_ID']+' '+os.environ['VIGIL_EVENT_TYPE']+'\\n')"
    )
    act = ActionSection(
        name="cmd", type="command", when="always", argv=[sys.executable, "-c", script, str(out)]
    )
    metrics = GatewayMetrics()
    runner = ActionRunner([act], metrics)
    a = alert(3)
    await runner._consider(act, a)
    await runner._consider(act, a)  # same alert again within min_interval_s
    assert out.read_text() == f"{a.alert_id} fire\n"
    assert count(metrics, "cmd", "ok") == 1 and count(metrics, "cmd", "rate_limited") == 1


async def test_command_timeout_is_killed_and_counted(tmp_path: Path) -> None:
    act = ActionSection(
        name="slow",
        type="command",
        when="always",
        timeout_s=0.2,
        argv=[sys.executable, "-c", "import time; time.sleep(30)"],
    )
    metrics = GatewayMetrics()
    await ActionRunner([act], metrics)._consider(act, alert(1))
    assert count(metrics, "slow", "failed") == 1


async def test_buzzer_file_only_while_cloud_down(tmp_path: Path) -> None:
    gpio = tmp_path / "gpio17_value"
    gpio.write_text("0")
    act = ActionSection(name="buzzer", type="buzzer", path=gpio, value="1")
    metrics = GatewayMetrics()
    cloud = {"up": True}
    acked = {"yes": True}

    async def is_acked(_a: object) -> bool:
        return acked["yes"]

    runner = ActionRunner(
        [act], metrics, cloud_up=lambda: cloud["up"], alert_acked=is_acked, ack_deadline_s=0.05
    )
    await runner._consider(act, alert(1))  # cloud up and the alert acknowledged: no local action
    assert gpio.read_text() == "0" and count(metrics, "buzzer", "not_needed") == 1
    acked["yes"] = False
    await runner._consider(act, alert(2))  # cloud "up" but this alert not acknowledged in time: buzz
    assert gpio.read_text() == "1"
    gpio.write_text("0")
    cloud["up"] = False
    await runner._consider(act, alert(3))  # cloud known down: at once
    assert gpio.read_text() == "1" and count(metrics, "buzzer", "ok") == 2


async def test_submit_filters_events_and_phases(tmp_path: Path) -> None:
    act = ActionSection(name="b", type="buzzer", path=tmp_path / "v", when="always")
    runner = ActionRunner([act], GatewayMetrics())
    cleared = alert(1).model_copy(update={"phase": AlertPhase.CLEARED})
    battery = alert(2, event=EventType.LOW_BATTERY)
    runner.submit([cleared, battery, alert(3)])
    assert runner.queue.qsize() == 1  # only the raised life-safety step
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(5):
        while not runner.fired:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (tmp_path / "v").read_text() == "1"
