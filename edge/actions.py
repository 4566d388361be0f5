"""Local life-safety actions: when the cloud cannot page anyone, the gateway itself must.

Why: a fire, CO, a fall, an SOS or an open manhole on a road
(``firmware_bridge.kernel.events.LIFE_SAFETY``) cannot wait for
the uplink to come back. Each ``[[actions]]`` entry fires on the RAISED and UPDATED steps (never CLEARED)
of its ``events``:

- ``when = "always"``: at once;
- ``when = "cloud_down"`` (default): as soon as the uplink is known to be down, or when the cloud has not
  acknowledged the alert within ``ack_deadline_s`` (default 15 s); never if the cloud acknowledged it.

Kinds: ``command`` (argv, alert fields in ``VIGIL_*`` environment variables, timeout then kill), ``buzzer``
(write ``value`` to a sysfs-like ``path`` such as a GPIO value file, or run ``argv``), ``sms`` (text-mode SMS
through a GSM/NB-IoT module's AT commands, 3GPP TS 27.005: ``AT+CMGF=1``, ``AT+CMGS="<number>"``, wait for
``>``, text, Ctrl-Z, expect ``+CMGS: <mr>`` and ``OK``). Each (action, alert id) fires at most once per
``min_interval_s``; every attempt is counted in ``vigil_gateway_actions_total{action,result}``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence

from alerts.contract import AlertEvent
from edge.config import ActionSection
from edge.errors import ActionError as ActionError
from edge.metrics import GatewayMetrics
from firmware_bridge.kernel.events import AlertPhase

log = logging.getLogger(__name__)


def alert_env(a: AlertEvent) -> dict[str, str]:
    return {
        "VIGIL_ALERT_ID": a.alert_id,
        "VIGIL_DEVICE_ID": a.device_id,
        "VIGIL_KIND": a.kind.value,
        "VIGIL_EVENT_TYPE": a.event_type.value,
        "VIGIL_SEVERITY": a.severity.name,
        "VIGIL_PHASE": a.phase.value,
        "VIGIL_TIME": f"{a.time:.3f}",
        "VIGIL_VALUE": "" if a.value is None else repr(a.value),
        "VIGIL_MESSAGE": a.message,
    }


def sms_text(a: AlertEvent) -> str:
    """A GSM-7-safe text (ASCII): the module is in text mode, Chinese would need UCS2 (AT+CSCS)."""
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(a.time))
    text = f"VIGIL {a.severity.name} {a.event_type.value.upper()} device {a.device_id} at {when}"
    if a.message.isascii() and a.message:
        text += f": {a.message}"
    return text[:160]


async def run_command(argv: Sequence[str], env: dict[str, str], timeout_s: float) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            _, err = await proc.communicate()
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise ActionError(f"{argv[0]} did not finish within {timeout_s} s (killed)") from exc
    if proc.returncode != 0:
        raise ActionError(f"{argv[0]} exited with {proc.returncode}: {err.decode(errors='replace')[-300:]}")


class AtModem:
    """A minimal AT-command dialog over a :class:`~firmware_bridge.transports.serial.SerialTransport`."""

    def __init__(self, port: str, baudrate: int, timeout_s: float) -> None:
        from firmware_bridge.transports.serial import SerialTransport

        self.transport = SerialTransport(port, baudrate, reconnect=False)
        self.timeout_s = timeout_s
        self._buf = b""
        self._chunks: object = None

    async def __aenter__(self) -> AtModem:
        await self.transport.__aenter__()
        self._chunks = self.transport.chunks()
        return self

    async def __aexit__(self, *exc: object) -> None:
        gen = self._chunks
        if gen is not None:
            await gen.aclose()  # type: ignore[attr-defined]
        await self.transport.__aexit__(None, None, None)

    async def expect(self, *tokens: bytes) -> bytes:
        """Read until one of ``tokens`` appears; ``ERROR`` raises. Returns everything read up to it."""
        async with asyncio.timeout(self.timeout_s):
            while True:
                for tok in (*tokens, b"ERROR"):
                    i = self._buf.find(tok)
                    if i >= 0:
                        seen, self._buf = self._buf[: i + len(tok)], self._buf[i + len(tok) :]
                        if tok == b"ERROR":
                            raise ActionError(f"modem answered ERROR: {seen[-100:]!r}")
                        return seen
                self._buf += await self._chunks.__anext__()  # type: ignore[attr-defined]

    async def command(self, line: bytes, *expect: bytes) -> bytes:
        await self.transport.write(line)
        return await self.expect(*(expect or (b"OK",)))

    async def send_sms(self, number: str, text: str) -> int:
        """Send one text-mode SMS; returns the message reference from ``+CMGS: <mr>``."""
        await self.command(b"AT+CMGF=1\r")
        await self.command(f'AT+CMGS="{number}"\r'.encode(), b">")
        await self.transport.write(text.encode("ascii", errors="replace") + b"\x1a")
        seen = await self.expect(b"OK")
        i = seen.find(b"+CMGS:")
        if i < 0:
            raise ActionError(f"no +CMGS reference in {seen[-100:]!r}")
        return int(seen[i + 6 :].split(b"\r")[0].strip() or b"0")


class ActionRunner:
    """Decides and runs local actions; one consumer task, bounded queue, per-alert rate limit."""

    def __init__(
        self,
        actions: Sequence[ActionSection],
        metrics: GatewayMetrics,
        *,
        cloud_up: Callable[[], bool | None] = lambda: None,
        alert_acked: Callable[[AlertEvent], Awaitable[bool]] | None = None,
        ack_deadline_s: float = 15.0,
        queue_size: int = 1000,
    ) -> None:
        self.actions = list(actions)
        self.metrics = metrics
        self.cloud_up = cloud_up
        self.alert_acked = alert_acked
        self.ack_deadline_s = ack_deadline_s
        self.queue: asyncio.Queue[tuple[ActionSection, AlertEvent]] = asyncio.Queue(queue_size)
        self._last: dict[tuple[str, str], float] = {}
        self.fired: list[tuple[str, str]] = []  # (action name, alert id): audit trail for status/tests

    def submit(self, alerts: Sequence[AlertEvent]) -> None:
        for a in alerts:
            if a.phase is AlertPhase.CLEARED:
                continue
            for act in self.actions:
                if a.event_type not in act.events:
                    continue
                try:
                    self.queue.put_nowait((act, a))
                except asyncio.QueueFull:
                    self.metrics.dropped.labels("action_queue_full").inc()
                    self.metrics.actions.labels(act.name, "dropped").inc()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                act, alert = await self.queue.get()
                tg.create_task(self._consider(act, alert), name=f"action:{act.name}:{alert.alert_id}")

    async def _consider(self, act: ActionSection, alert: AlertEvent) -> None:
        if act.when == "cloud_down" and not await self._cloud_failed(act, alert):
            self.metrics.actions.labels(act.name, "not_needed").inc()
            return
        key = (act.name, alert.alert_id)
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < act.min_interval_s:
            self.metrics.actions.labels(act.name, "rate_limited").inc()
            return
        self._last[key] = now
        if len(self._last) > 10_000:
            cutoff = now - max(a.min_interval_s for a in self.actions)
            self._last = {k: v for k, v in self._last.items() if v >= cutoff}
        try:
            await self.execute(act, alert)
        except (ActionError, OSError) as exc:
            self.metrics.actions.labels(act.name, "failed").inc()
            log.error("local action %s for %s failed: %s", act.name, alert.alert_id, exc)
            return
        self.fired.append(key)
        self.metrics.actions.labels(act.name, "ok").inc()
        log.warning("local action %s fired for %s", act.name, alert.alert_id)

    async def _cloud_failed(self, act: ActionSection, alert: AlertEvent) -> bool:
        """True as soon as the uplink is known down, or if the alert is not acknowledged by the deadline.

        Checked every 0.25 s: a cheap flag and, when the cloud is up, one indexed outbox lookup.
        """
        deadline = time.monotonic() + (
            act.ack_deadline_s if act.ack_deadline_s is not None else self.ack_deadline_s
        )
        while True:
            if self.cloud_up() is False:
                return True
            if self.alert_acked is not None and self.cloud_up() is True and await self.alert_acked(alert):
                return False
            if time.monotonic() >= deadline:
                return self.alert_acked is None or not await self.alert_acked(alert)
            await asyncio.sleep(0.25)

    async def execute(self, act: ActionSection, alert: AlertEvent) -> None:
        if act.type == "command" or (act.type == "buzzer" and act.path is None):
            await run_command(act.argv, alert_env(alert), act.timeout_s)
        elif act.type == "buzzer":
            assert act.path is not None
            path, value = act.path, act.value
            await asyncio.to_thread(path.write_text, value, "ascii")
        else:
            assert act.port is not None
            async with AtModem(act.port, act.baudrate, act.timeout_s) as modem:
                for number in act.numbers:
                    mr = await modem.send_sms(number, sms_text(alert))
                    log.info("SMS to %s accepted by the module (reference %d)", number[:4] + "***", mr)
