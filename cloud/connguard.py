"""Slow and greedy clients cannot take the cloud down (issue 11): header and body deadlines, connection caps.

Found by a hostile test: half-sent requests never timed out, and 1,100 idle connections from one client
exhausted the process's file descriptors, so ``/healthz`` timed out for everybody, without logging in.
uvicorn's own keep-alive timeout only starts *after* a response, so the guard lives in the HTTP protocol:
:func:`guarded_protocol` returns a subclass of uvicorn's h11 protocol that

- closes a connection whose request head (request line + headers) is not complete ``header_timeout_s``
  after its first byte or after the connection opened (slowloris), and again for every keep-alive request;
- closes a connection whose declared body has not fully arrived ``body_timeout_s`` after the head (the
  application then sees ``http.disconnect``: nothing half-read is stored);
- refuses a connection beyond ``per_client`` open connections from one IP address, or beyond ``total``
  for the process (kept below the unit's ``LimitNOFILE``), so one client cannot starve the others.

Every closed connection is counted in ``vigil_cloud_connections_refused_total{reason}``. Use
:func:`server_config` to build a ``uvicorn.Config`` with the guard and sane uvicorn limits.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from dataclasses import dataclass, fields
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from cloud.errors import ConfigError
from cloud.limits import GuardMetrics


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Every field is also ``VIGIL_CLOUD_LIMIT_<FIELD>`` (see :meth:`from_env`)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    per_client: int = 128  # a district's gateways behind one carrier NAT share an address
    total: int = 16_000  # below LimitNOFILE=65536 in deploy/vigil-cloud.service, with room for files

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ConnectionLimits:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"VIGIL_CLOUD_LIMIT_{f.name.upper()}"
            if key not in env:
                continue
            try:
                v = float(env[key]) if f.type in ("float", float) else int(env[key])
            except ValueError as exc:
                raise ConfigError(f"{key}: not a number: {env[key]!r}") from exc
            if v <= 0:
                raise ConfigError(f"{key}: must be > 0, got {v}")
            values[f.name] = v
        return cls(**values)


class ConnectionGuard:
    """Shared by every connection of one server: open connections per client address."""

    def __init__(self, limits: ConnectionLimits, metrics: GuardMetrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.open: Counter[str] = Counter()
        self.total = 0

    def admit(self, client: str) -> str | None:
        """Count a new connection; returns why it is refused (``None`` = admitted)."""
        if self.total >= self.limits.total:
            return "total_cap"
        if self.open[client] >= self.limits.per_client:
            return "per_client_cap"
        self.open[client] += 1
        self.total += 1
        return None

    def release(self, client: str) -> None:
        self.total -= 1
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]


def guarded_protocol(guard: ConnectionGuard) -> type[H11Protocol]:
    """A uvicorn h11 protocol class bound to ``guard`` (pass it as ``uvicorn.Config(http=...)``)."""

    class GuardedH11Protocol(H11Protocol):
        _guard = guard

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
            self._admitted = False
            self._timer: asyncio.TimerHandle | None = None
            self._timer_for: str = ""
            why = self._guard.admit(self._peer)
            if why is not None:
                self._guard.metrics.connections_refused.labels(why).inc()
                transport.abort()  # not even a response: an attacker gets nothing to read
                return
            self._admitted = True
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if not getattr(self, "_admitted", False):
                return
            self._admitted = False
            self._cancel()
            self._guard.release(self._peer)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        # -- deadlines -------------------------------------------------------------------------------------
        def _phase(self) -> str:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                return "header"  # waiting for (the rest of) a request head
            if cycle.more_body and not cycle.disconnected:
                return "body"
            return ""  # the application is working on a complete request: its own timeouts apply

        def _arm(self) -> None:
            phase = self._phase()
            if phase == self._timer_for:
                return  # a running deadline is not extended by more bytes (slow trickles)
            self._cancel()
            if not phase or self.transport.is_closing():
                return
            limits = self._guard.limits
            delay = limits.header_timeout_s if phase == "header" else limits.body_timeout_s
            self._timer_for = phase
            self._timer = self.loop.call_later(delay, self._expired, phase)

        def _cancel(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_for = None, ""

        def _expired(self, phase: str) -> None:
            self._timer, self._timer_for = None, ""
            if self._phase() != phase or self.transport.is_closing():
                self._arm()
                return
            if phase == "header" and self.timeout_keep_alive_task is not None:
                return  # idle between keep-alive requests, nothing received: uvicorn's keep-alive rules
            self._guard.metrics.connections_refused.labels(f"{phase}_timeout").inc()
            self.transport.close()

    return GuardedH11Protocol


def server_config(app: Any, *, host: str, port: int, metrics: GuardMetrics, **kw: Any) -> Any:
    """A ``uvicorn.Config`` for ``app`` with the connection guard and bounded uvicorn limits."""
    import uvicorn

    from cloud.tls import peer_identity_protocol

    limits = kw.pop("limits", None) or ConnectionLimits.from_env()
    guard = ConnectionGuard(limits, metrics)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=peer_identity_protocol(guarded_protocol(guard)),  # the peer and its certificate: cloud/tls.py
        log_config=None,
        access_log=False,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,  # a request head over 64 KiB is a 400
        **kw,
    )


__all__ = ["ConnectionGuard", "ConnectionLimits", "guarded_protocol", "server_config"]
