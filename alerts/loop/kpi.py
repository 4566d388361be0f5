"""KPIs of the loop, the way street offices are scored (GB/T 30428.4), plus the response times we add.

- 结案率 closure rate = closed / due; 按期结案率 on-time closure rate = closed on time / due;
  返工率 rework rate = reworked / closed (a reopen, a failed verification);
- satisfaction: mean rating (1..5) and the share rated 4 or 5;
- times, p50 and p95 (nearest rank): discovery (event start -> alert), dispatch (alert -> first
  notification), acknowledgement (alert -> accepted), arrival (alert -> on site), handling (on site ->
  handled), whole case (registered -> closed).

Grouped by any field of :class:`CaseRecord` (department, zone, responder, kind). Pure: the shell turns
its rows into records. A published city report's figures are the test vector: 911 / 972 = 93.72 %
closure, 737 / 972 = 75.82 % on time.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class CaseRecord:
    department: str = ""
    zone: str = ""
    responder: str = ""
    kind: str = ""
    event_start: float | None = None
    alert_time: float | None = None
    first_notified: float | None = None
    accepted: float | None = None
    arrived: float | None = None
    handled: float | None = None
    registered: float | None = None
    closed: float | None = None
    deadline: float | None = None  # whole-case deadline (paused time already added)
    reworked: bool = False
    rating: int | None = None


@dataclass(frozen=True, slots=True)
class KpiRow:
    group: str
    due: int
    closed: int
    closed_on_time: int
    reworked: int
    closure_rate: float | None
    on_time_rate: float | None
    rework_rate: float | None
    satisfaction: float | None
    satisfied_share: float | None
    discovery_p50_s: float | None
    discovery_p95_s: float | None
    dispatch_p50_s: float | None
    dispatch_p95_s: float | None
    ack_p50_s: float | None
    ack_p95_s: float | None
    arrive_p50_s: float | None
    arrive_p95_s: float | None
    handle_p50_s: float | None
    handle_p95_s: float | None
    case_p50_s: float | None
    case_p95_s: float | None


def ratio(num: int, den: int) -> float | None:
    """``num / den``, or ``None`` when nothing was due (never a division by zero, never NaN)."""
    return None if den <= 0 else num / den


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); ``None`` for no values."""
    vals = sorted(v for v in values if v is not None and math.isfinite(v))
    if not vals:
        return None
    rank = max(1, math.ceil(q / 100 * len(vals)))
    return vals[min(rank, len(vals)) - 1]


def _span(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else max(0.0, b - a)


def summarise(group: str, cases: Sequence[CaseRecord]) -> KpiRow:
    closed = [c for c in cases if c.closed is not None]
    on_time = [c for c in closed if c.deadline is None or (c.closed is not None and c.closed <= c.deadline)]
    rework = [c for c in closed if c.reworked]
    ratings = [c.rating for c in cases if c.rating is not None]

    def pair(fn: str) -> tuple[float | None, float | None]:
        spans = [s for s in (_times(c)[fn] for c in cases) if s is not None]
        return percentile(spans, 50), percentile(spans, 95)

    disc, disp, ack, arr, hnd, case = (
        pair(k) for k in ("discovery", "dispatch", "ack", "arrive", "handle", "case")
    )
    return KpiRow(
        group=group, due=len(cases), closed=len(closed), closed_on_time=len(on_time), reworked=len(rework),
        closure_rate=ratio(len(closed), len(cases)), on_time_rate=ratio(len(on_time), len(cases)),
        rework_rate=ratio(len(rework), len(closed)),
        satisfaction=(sum(ratings) / len(ratings)) if ratings else None,
        satisfied_share=ratio(sum(1 for r in ratings if r >= 4), len(ratings)),
        discovery_p50_s=disc[0], discovery_p95_s=disc[1], dispatch_p50_s=disp[0], dispatch_p95_s=disp[1],
        ack_p50_s=ack[0], ack_p95_s=ack[1], arrive_p50_s=arr[0], arrive_p95_s=arr[1],
        handle_p50_s=hnd[0], handle_p95_s=hnd[1], case_p50_s=case[0], case_p95_s=case[1],
    )  # fmt: skip


def _times(c: CaseRecord) -> dict[str, float | None]:
    return {
        "discovery": _span(c.event_start, c.alert_time),
        "dispatch": _span(c.alert_time, c.first_notified),
        "ack": _span(c.alert_time, c.accepted),
        "arrive": _span(c.alert_time, c.arrived),
        "handle": _span(c.arrived or c.accepted, c.handled),
        "case": _span(c.registered, c.closed),
    }


GROUPS = ("all", "department", "zone", "responder", "kind")


def kpis(cases: Iterable[CaseRecord], by: str = "all") -> list[KpiRow]:
    """One row per value of ``by`` (``all`` = one row), sorted by group name."""
    if by not in GROUPS:
        raise ValueError(f"group by one of {list(GROUPS)}")
    groups: dict[str, list[CaseRecord]] = defaultdict(list)
    for c in cases:
        groups["all" if by == "all" else str(getattr(c, by)) or "-"].append(c)
    if by == "all" and not groups:
        groups["all"] = []
    return [summarise(g, groups[g]) for g in sorted(groups)]


def to_csv(rows: Sequence[KpiRow]) -> str:
    """CSV with a header; rates as fractions, times in seconds, empty where undefined."""
    buf = io.StringIO()
    fields = list(KpiRow.__dataclass_fields__)
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {
                k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
                for k, v in asdict(r).items()
            }
        )
    return buf.getvalue()
