"""The cloud's process roles, each a ``vigil cloud ...`` command and a systemd template unit (deploy/).

Every role is the same application (:func:`cloud.app.create_app`: settings, database, time-series store,
alert sink, registered periodic jobs) with a different front door, so anything another part of the cloud
wires into ``create_app`` reaches every role:

- ``api``         (``vigil cloud``)             the HTTP API, uvicorn; stateless, run N behind a proxy
- ``mqtt-ingest`` (``vigil cloud mqtt-ingest``) MQTT ingest workers on the broker's shared subscription
- ``detect``      (``vigil cloud detect``)      cloud-side detection over readings that arrive without a
  Vigil gateway (operator pushes): see :mod:`cloud.detect_worker`
- ``jobs``        (``vigil cloud jobs``)        periodic jobs only (connectivity, escalation, retries)

Periodic jobs run in every role whose settings have ``run_jobs`` (default true) and are exactly-once
across all of them by their leases (:mod:`cloud.jobs`); a district typically sets
``VIGIL_CLOUD_RUN_JOBS=false`` on API and ingest workers and runs two ``jobs`` processes (one standby).
Roles without HTTP expose ``/metrics`` with ``--metrics-port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from cloud.settings import CloudSettings
from firmware_bridge.kernel.clock import Clock

log = logging.getLogger(__name__)

#: what a role does while the app's lifespan (and its periodic jobs) runs; returns when done or cancelled
RoleBody = Callable[[Any], Awaitable[None]]


async def _forever(_state: Any) -> None:
    await asyncio.Event().wait()


async def run_role(
    settings: CloudSettings,
    body: RoleBody | None = None,
    *,
    clock: Clock | None = None,
    metrics_port: int | None = None,
) -> None:
    """Build the app, run its lifespan (jobs included if ``settings.run_jobs``) and ``body(state)``.

    SIGTERM (systemd's stop) and SIGINT cancel the role cleanly: leases are released, so a standby
    takes the jobs over at once, and un-acknowledged MQTT batches stay with the broker.
    """
    from cloud.app import create_app

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)

    app = await asyncio.to_thread(create_app, settings, clock=clock)
    state = app.state.vigil
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.host, registry=state.metrics.registry)
        log.info("metrics on /metrics", extra={"port": metrics_port})
    async with app.router.lifespan_context(app):
        with contextlib.suppress(asyncio.CancelledError):
            await (body or _forever)(state)


def mqtt_body(settings: CloudSettings, workers: int) -> RoleBody:
    """MQTT ingest workers in front of the app's own ``IngestService`` (its alert sink included).

    Worker ``k`` uses client id ``<mqtt_client_id>-<k>``: keep ``mqtt_client_id`` stable per host and
    unique across hosts (the unit's instance name), so a restarted worker resumes its broker session
    and gets its un-acknowledged batches back.
    """
    from cloud.mqtt_ingest import IngestWorker, MqttIngestConfig, MqttIngestMetrics

    if workers < 1:
        raise ValueError("workers must be >= 1")
    config = MqttIngestConfig(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        client_id=settings.mqtt_client_id,
        group=settings.mqtt_group,
        username=settings.mqtt_username or None,
        password=settings.mqtt_password or None,
    )

    async def body(state: Any) -> None:
        metrics = MqttIngestMetrics(state.metrics.registry)
        async with asyncio.TaskGroup() as tg:
            for k in range(workers):
                cfg = replace(config, client_id=f"{config.client_id}-{k}")
                worker = IngestWorker(cfg, state.ingest, metrics=metrics)
                tg.create_task(worker.run(), name=f"mqtt-ingest-worker[{cfg.client_id}]")

    return body


__all__ = ["RoleBody", "mqtt_body", "run_role"]
