"""Manual reports filed by staff: a grid worker on patrol or a call taker reports a problem.

``POST /api/v1/loop/reports`` (staff, authenticated). Residents report anonymously through the notify
feature's ``POST /api/v1/reports`` (rate-limited, case links), which hands its reports to the loop.

A report becomes an incident at stage ``reported`` (上报); a call taker registers (立案) or dismisses it
through ``/api/v1/incidents/{id}/actions``, or files it registered at once (``register: true``, admin
/ dispatcher only). A report needs a type, a description and a location (lat/lon, an address or a grid
cell): without one it is a 400 that says so. Photos go to ``/api/v1/incidents/{id}/photos``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import State
from cloud.api.incidents import Loop, Staff, _read
from cloud.auth import PERSONAL_DATA_ROLES
from cloud.loop.config import audit
from cloud.loop.service import Report
from firmware_bridge.kernel.events import Severity

router = APIRouter(prefix="/api/v1/loop/reports", tags=["incidents"])


class ReportIn(BaseModel):
    type: str = Field(min_length=1, max_length=64, description="e.g. 井盖破损, broken_streetlight")
    description: str = Field(min_length=1, max_length=2000)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    address: str = Field(default="", max_length=256)
    grid: str = Field(default="", max_length=64)
    street: str = Field(default="", max_length=64)
    community: str = Field(default="", max_length=64)
    grade: Severity = Field(default=Severity.MEDIUM, description="risk grade 1 low .. 3 high")
    reporter: str | None = Field(
        default=None, max_length=64, description="who reported (default: the caller)"
    )
    contact: str = Field(default="", max_length=32, description="reporter's phone; sealed at rest")
    register_now: bool = Field(
        default=False, alias="register", description="register (立案) at once: admin or dispatcher"
    )

    model_config = ConfigDict(populate_by_name=True)


@router.post("", status_code=201, summary="File a manual report (上报)")
async def file_report(body: ReportIn, state: State, loop: Loop, who: Staff) -> dict[str, Any]:
    rep = Report(
        type=body.type,
        description=body.description,
        reporter=body.reporter or who.name,
        lat=body.lat,
        lon=body.lon,
        address=body.address,
        grid=body.grid,
        street=body.street,
        community=body.community,
        severity=body.grade,
        contact=body.contact,
        register=body.register_now and who.role in PERSONAL_DATA_ROLES,
    )
    incident_id = await asyncio.to_thread(loop.report, rep, role=who.role.value)

    def _audit() -> None:
        with state.db.write() as s:
            audit(
                s,
                actor=who.name,
                role=who.role.value,
                action="report.file",
                target=f"incident:{incident_id}",
                now=loop.clock.now(),
                type=body.type,
            )

    await asyncio.to_thread(_audit)
    return await asyncio.to_thread(_read, state, loop, incident_id, who, None)
