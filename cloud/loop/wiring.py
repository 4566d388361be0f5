"""How the loop plugs into the app: a sink in front of the app's sink, a periodic job, the routers.

``create_app`` wraps its sink in :class:`LoopSink` before the state is built (so ingest, the
connectivity monitor and cloud-side detection all feed the loop) and calls :func:`install` once the
state exists. The loop sees each committed step first; the wrapped sink (a test's recorder, the
console's live stream) is called after it whatever the loop did.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

from alerts.contract import AlertEvent
from cloud.ingest import AlertSink, NullAlertSink
from cloud.loop.service import LoopService

log = logging.getLogger(__name__)
JOB_NAME = "loop"
#: how often the ``loop`` job reconciles missed alerts and fires due timers (clock seconds)
DEFAULT_TICK_S = 1.0


class LoopSink:
    """An :class:`~cloud.ingest.AlertSink` that hands steps to the loop, then to the wrapped sink."""

    def __init__(self, then: AlertSink | None = None) -> None:
        self.then: AlertSink = then or NullAlertSink()
        self.service: LoopService | None = None

    async def alerts_committed(self, steps: Sequence[AlertEvent], *, source: str) -> None:
        try:
            if self.service is not None:
                await self.service.alerts_committed(steps, source=source)
        finally:
            await self.then.alerts_committed(steps, source=source)


def install(app: FastAPI, sink: LoopSink) -> LoopService:
    """Build the service on the app's state, register the ``loop`` job and the API routers."""
    from cloud.api import incidents, kpi, reports, rosters

    state: Any = app.state.vigil
    service = LoopService(state.db, box=state.registry.box, clock=state.clock)
    sink.service = service
    tick = float(os.environ.get("VIGIL_CLOUD_LOOP_TICK_S", DEFAULT_TICK_S))
    if tick > 0:
        state.jobs.register(JOB_NAME, tick, service.job)
    app.state.loop = service
    for module in (incidents, reports, rosters, kpi):
        app.include_router(module.router)
    return service
