"""KPIs of the loop: 结案率, 按期结案率, 返工率, satisfaction, response times and the responders' verdicts
(误报率 false-alarm rate, 扰动率 nuisance rate), as JSON or CSV.

``GET /api/v1/kpi?by=department&since=...&until=...&format=csv``. Cases counted are those registered in
``[since, until)`` (default: the last 30 days); rates are fractions, ``null`` when nothing was due. The
verdict rates are fractions of the cases whose responder gave an outcome (``judged``).
"""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response

from alerts.loop.kpi import GROUPS, KpiRow
from cloud.api.deps import State, User
from cloud.api.incidents import Loop
from cloud.api.rosters import _when
from cloud.errors import BadRequestError
from cloud.loop.views import VERDICT_FIELDS, kpi_table
from firmware_bridge.kernel.locale import iso

router = APIRouter(prefix="/api/v1/kpi", tags=["kpi"])


@router.get(
    "",
    response_model=None,
    summary="Loop KPIs per department, zone, responder or device kind",
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "JSON, or CSV"}},
)
async def get_kpis(
    state: State,
    loop: Loop,
    who: User,
    by: str = Query(default="all", description=f"one of {list(GROUPS)}"),
    since: str | None = None,
    until: str | None = None,
    format: Literal["json", "csv"] = "json",
) -> Response | dict[str, Any]:
    if by not in GROUPS:
        raise BadRequestError(f"by must be one of {list(GROUPS)}")
    now = loop.clock.now()
    t1 = _when(until, now + 1)
    t0 = _when(since, t1 - 30 * 86400)

    def run() -> list[dict[str, Any]]:
        with state.db.read() as s:
            return kpi_table(s, t0, t1, by)

    rows = await asyncio.to_thread(run)
    if format == "csv":
        return PlainTextResponse(
            to_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="vigil-kpi.csv"'},
        )
    return {"since": iso(t0), "until": iso(t1), "by": by, "rows": rows}


def to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV with a header (the KPI columns, then the verdicts); rates as fractions, times in seconds,
    empty where undefined (as :func:`alerts.loop.kpi.to_csv`)."""
    buf = io.StringIO()
    fields = [*KpiRow.__dataclass_fields__, *VERDICT_FIELDS]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in r.items()}
        )
    return buf.getvalue()
