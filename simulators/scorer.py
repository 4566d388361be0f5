"""Score detected alerts against ground truth: recall, precision, false alarms, detection delay.

Semantics (also in ``docs/simulators.md``; every rule is pinned by a hand-made case in
``tests/simulators/test_scorer.py``):

- Alerts count once per episode (``alert_id``), at the time of its ``raised`` step; ``updated`` /
  ``cleared`` steps of the same episode are ignored. An episode whose raised step is missing from the input
  (a pruned outbox, a current-state API view) counts once, at its earliest step.
- Truth records whose expected severity is ``NONE`` (every ``nuisance_*`` label, a fall the person got up
  from) are *must-not-alert* episodes: they are not counted in recall.
- A raised alert **matches** a (positive) truth event of the same device and event type when its ``time``
  falls in ``[start - tolerance, end + grace]``. Each truth event is detected at most once, by the first
  alert (in time order) that matches it; when several undetected events qualify, the earliest-starting wins.
- **Detection delay** = alert time - truth start (negative when the alert came within the tolerance before
  the labelled start).
- A raised alert that matches nothing is
  - a **duplicate** if it falls in the window of an event of the same device and type that an earlier
    alert already detected (a second page for one episode), otherwise
  - a **false alarm**. A false alarm is *attributed* to a must-not-alert truth record of the same device
    whose window contains the alert time (the nuisance that caused it), when there is one.
- Per event type (the truth's type for recall, the alert's type for precision):
  ``recall = detected / events``; ``precision = matched alerts / raised alerts`` (duplicates and false
  alarms both lower it); ``false alarms per 1,000 device-days = false alarms / (devices of that kind x
  days) x 1000`` (devices of all kinds when only a total is known); delay p50 / p95 over detected events.
- **Clear delay** = the time the event's alert cleared - truth end: how long an operator still sees the
  alarm open after it is over (a wearer back inside the fence, a fire out), negative when it cleared
  before the labelled end. The event's alert is its *last* episode: the one that detected it, or a later
  duplicate in its window (an alert that cleared early and was raised again is still open); its
  ``cleared`` step is the earliest one of that ``alert_id``. Per type: ``cleared`` (detected events whose
  last alert has a cleared step), ``not_cleared`` (it has none in the input: still open when the run or
  the journal ended), clear delay p50 / p95 and ``clears_over_1h`` (delay > 3600 s) over the cleared.
- **Censoring at the end of the data**: a truth event that starts less than its type's detection
  horizon (``DETECTION_HORIZON_S``, the longest delay the rules allow by design, e.g. 2 h of stillness
  for inactivity) before the end of the data is *censored*: the run stopped before the detector could
  be expected to page. It is left out of events, detections, recall, delays and ``missed`` whether
  detected or not (counting only the detected ones would flatter recall), and reported as ``censored``
  (``censored_detected`` of them detected all the same); an alert matching it is still a matched alert.
  A detected event whose alert has no cleared step and whose truth ended less than ``LATE_CLEAR_S``
  before the end of the data (still going on, or just over) is ``clear_censored``, not ``not_cleared``:
  it could not yet be judged late. Both need the end of the data, ``end`` (epoch s, the run's end):
  without it nothing is censored (the scorer knows the run's length, not when it started).
- **"I'm OK"** (wristband fall truth with ``ok_at``, firmware 1.7; reported apart in ``ok``, only when the
  truth has any): ``cancelled`` falls (severity NONE, pressed within the 30 s cancel window) are
  must-not-alert like any nuisance, so a page for one is a false alarm (``cancelled_paged``; the others
  are ``false_pages_avoided``: each lay still past 30 s and would have been paged without the press);
  ``recovered`` ones (pressed after getting up, NONE as before); ``paged`` falls (HIGH: a real fall,
  pressed after the page) are scored as falls, and ``clear_after_ok`` p50 / p95 is their alert's clear -
  the press (``cleared_by_ok``: within 5 s of it).
- The overall row sums events, alerts, detections, duplicates and false alarms over all types.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from alerts.contract import AlertEvent
from firmware_bridge.kernel.events import KIND_EVENTS, AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from simulators.truth import TruthRecord

DEFAULT_TOLERANCE_S = 60.0
DEFAULT_GRACE_S = 600.0
LATE_CLEAR_S = 3600.0  # a clear delay over this counts in clears_over_1h

_E = EventType
#: seconds from an event's start within which the rules are expected to page it (by design, not as
#: measured): a truth event starting less than this before the end of the data is censored
DETECTION_HORIZON_S: dict[EventType, float] = {
    _E.FIRE: 2700.0,  # uncorroborated smoke pages after fire_persist_s (45 min)
    _E.CO: 5400.0,  # EN 50291: 50 ppm may take up to 90 min to alarm
    _E.OVERFLOW: 1200.0,  # the device's water-alarm uplink, then its 10-min repeat
    _E.HEART_RATE_HIGH: 1200.0,  # ~10 min at rest, plus an uplink interval
    _E.HEART_RATE_LOW: 1200.0,
    _E.SPO2_LOW: 1200.0,
    _E.INACTIVITY: 9000.0,  # inactivity_s (2 h of daytime stillness) + 30 min
    _E.GEOFENCE_EXIT: 1800.0,  # a fix outside the fence: GNSS fixes every 5-15 min while walking
    _E.BAND_REMOVED: 1800.0,  # band_removed_s (15 min) + an uplink interval
    _E.DEVICE_SILENT: 95040.0,  # 2.2 missed heartbeats of the slowest kind (12 h)
}
#: every other type: a flag or threshold the device reports in its next uplinks (minutes)
DEFAULT_HORIZON_S = 600.0


@dataclass
class ScoreRow:
    event_type: str
    events: int = 0
    detected: int = 0
    alerts: int = 0
    matched_alerts: int = 0
    duplicates: int = 0
    false_alarms: int = 0
    severity_mismatches: int = 0
    recall: float | None = None
    precision: float | None = None
    false_alarms_per_1000_device_days: float | None = None
    delay_p50_s: float | None = None
    delay_p95_s: float | None = None
    cleared: int = 0
    not_cleared: int = 0
    clear_delay_p50_s: float | None = None
    clear_delay_p95_s: float | None = None
    clears_over_1h: int = 0
    censored: int = 0
    censored_detected: int = 0
    clear_censored: int = 0
    delays: list[float] = field(default_factory=list, repr=False)
    clear_delays: list[float] = field(default_factory=list, repr=False)

    def finish(self, device_days: float) -> None:
        self.recall = self.detected / self.events if self.events else None
        self.precision = self.matched_alerts / self.alerts if self.alerts else None
        self.false_alarms_per_1000_device_days = (
            self.false_alarms / device_days * 1000.0 if device_days > 0 else None
        )
        if self.delays:
            d = np.asarray(self.delays, dtype=np.float64)
            self.delay_p50_s = float(np.percentile(d, 50))
            self.delay_p95_s = float(np.percentile(d, 95))
        self.cleared = len(self.clear_delays)
        if self.clear_delays:
            c = np.asarray(self.clear_delays, dtype=np.float64)
            self.clear_delay_p50_s = float(np.percentile(c, 50))
            self.clear_delay_p95_s = float(np.percentile(c, 95))
            self.clears_over_1h = int(np.count_nonzero(c > LATE_CLEAR_S))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("delays")
        d.pop("clear_delays")
        return d


@dataclass
class ScoreReport:
    rows: list[ScoreRow]
    overall: ScoreRow
    false_alarms_by_cause: dict[str, int]
    tolerance_s: float
    grace_s: float
    devices: int
    duration_s: float
    missed: list[dict[str, Any]] = field(default_factory=list)
    end: float | None = None
    censored: list[dict[str, Any]] = field(default_factory=list)
    ok: dict[str, Any] = field(default_factory=dict)
    #: device-silent raises after the end of the data (the devices stopped because the data did): not scored
    silent_after_end: int = 0

    def row(self, event_type: str | EventType) -> ScoreRow:
        name = EventType(event_type).value
        for r in self.rows:
            if r.event_type == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tolerance_s": self.tolerance_s,
            "grace_s": self.grace_s,
            "devices": self.devices,
            "duration_s": self.duration_s,
            "per_event_type": [r.to_dict() for r in self.rows],
            "overall": self.overall.to_dict(),
            "false_alarms_by_cause": self.false_alarms_by_cause,
            "missed": self.missed,
            "end": self.end,
            "censored": self.censored,
            **({"ok": self.ok} if self.ok else {}),
            "horizons_s": {k.value: v for k, v in DETECTION_HORIZON_S.items()} | {"*": DEFAULT_HORIZON_S},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def format_table(self) -> str:
        def f(v: float | None, pct: bool = False) -> str:
            if v is None:
                return "-"
            return f"{v * 100:.1f}%" if pct else f"{v:.1f}"

        head = (
            f"{'event type':<20} {'events':>6} {'found':>6} {'recall':>7} {'alerts':>6} {'dup':>4} "
            f"{'false':>5} "
            f"{'precision':>9} {'FA/1000dd':>9} {'delay p50':>9} {'p95':>8} {'cens':>5}"
        )
        lines = [head, "-" * len(head)]
        for r in [*self.rows, self.overall]:
            if r is self.overall:
                lines.append("-" * len(head))
            lines.append(
                f"{r.event_type:<20} {r.events:>6} {r.detected:>6} {f(r.recall, True):>7} {r.alerts:>6} "
                f"{r.duplicates:>4} {r.false_alarms:>5} {f(r.precision, True):>9} "
                f"{f(r.false_alarms_per_1000_device_days):>9} {f(r.delay_p50_s):>9} {f(r.delay_p95_s):>8} "
                f"{r.censored:>5}"
            )
        clears = [r for r in [*self.rows, self.overall] if r.cleared or r.not_cleared or r.clear_censored]
        if clears:
            head2 = f"{'clear delay':<20} {'cleared':>7} {'open':>5} {'cens':>5} "
            head2 += f"{'p50':>9} {'p95':>8} {'>1 h':>5}"
            lines += ["", head2, "-" * len(head2)]
            for r in clears:
                lines.append(
                    f"{r.event_type:<20} {r.cleared:>7} {r.not_cleared:>5} {r.clear_censored:>5} "
                    f"{f(r.clear_delay_p50_s):>9} {f(r.clear_delay_p95_s):>8} {r.clears_over_1h:>5}"
                )
            lines.append(
                "(alert cleared - truth end, seconds; open: detected, its alert never cleared though the "
                "event ended over 1 h before the end of the data; cens: ended later or still going on)"
            )
        if self.ok:
            o = self.ok
            lines.append(
                f"falls cancelled by OK: {o['cancelled']} (paged anyway {o['cancelled_paged']}, false pages "
                f"avoided {o['false_pages_avoided']}); OK after a recovered fall: {o['recovered']} (paged "
                f"{o['recovered_paged']}); real falls cleared by OK: {o['cleared_by_ok']} of {o['paged']} "
                f"(clear - press p50 {f(o['clear_after_ok_p50_s'])} s, p95 {f(o['clear_after_ok_p95_s'])} s)"
            )
        if self.false_alarms_by_cause:
            lines.append(
                "false alarms by cause: "
                + ", ".join(
                    f"{k} {v}" for k, v in sorted(self.false_alarms_by_cause.items(), key=lambda kv: -kv[1])
                )
            )
        if self.silent_after_end:
            lines.append(
                f"not scored: {self.silent_after_end} device-silent alerts raised after the end of the data "
                "(the devices stopped because the run did)"
            )
        lines.append(
            f"(tolerance {self.tolerance_s:g} s before start, grace {self.grace_s:g} s after end; "
            f"{self.devices} devices over {self.duration_s / 86400:.3f} days; delays in seconds; "
            f"cens: events starting within their detection horizon of the end of the data, not scored)"
        )
        return "\n".join(lines)


def raises(alerts: Iterable[AlertEvent | Mapping[str, Any]]) -> list[AlertEvent]:
    """One raise per alert episode (``alert_id``), in time order.

    The episode's ``raised`` step when the input has one (the earliest, if a journal holds it twice);
    otherwise its earliest step of any phase, so a source that lost or never listed the raised step (a
    pruned outbox, a "current state" API view) still counts each episode exactly once.
    """
    best: dict[str, AlertEvent] = {}
    for a in alerts:
        ev = a if isinstance(a, AlertEvent) else AlertEvent.model_validate(a)
        cur = best.get(ev.alert_id)
        if cur is None:
            best[ev.alert_id] = ev
            continue
        ev_key = (ev.phase is not AlertPhase.RAISED, ev.time)
        cur_key = (cur.phase is not AlertPhase.RAISED, cur.time)
        if ev_key < cur_key:
            best[ev.alert_id] = ev
    return sorted(best.values(), key=lambda e: (e.time, e.device_id, e.event_type.value, e.alert_id))


def _kind_of(event_type: EventType) -> DeviceKind | None:
    kinds = [k for k, evs in KIND_EVENTS.items() if event_type in evs]
    return kinds[0] if len(kinds) == 1 else None


def _cause(t: TruthRecord) -> str:
    return t.event_type.value if t.event_type.is_nuisance else f"{t.event_type.value} (no alarm expected)"


def score(
    truth: Iterable[TruthRecord],
    alerts: Iterable[AlertEvent | Mapping[str, Any]],
    devices: int | Mapping[DeviceKind, int],
    duration_s: float,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    grace_s: float = DEFAULT_GRACE_S,
    end: float | None = None,
    horizons: Mapping[EventType, float] | None = None,
) -> ScoreReport:
    """Compare raised alerts with ground truth (see the module docstring for the exact rules).

    ``end``: when the data ends (epoch s; None: no censoring, see the module docstring); ``horizons``:
    per-type detection horizons overriding :data:`DETECTION_HORIZON_S`."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    per_kind = dict(devices) if isinstance(devices, Mapping) else {}
    total_devices = sum(per_kind.values()) if per_kind else int(devices)  # type: ignore[arg-type]
    days = duration_s / 86400.0
    truth = list(truth)
    positive: dict[tuple[str, EventType], list[TruthRecord]] = defaultdict(list)
    nuisance: dict[str, list[TruthRecord]] = defaultdict(list)
    for t in truth:
        if t.must_not_alert:
            nuisance[t.device_id].append(t)
        else:
            positive[(t.device_id, t.event_type)].append(t)
    for lst in positive.values():
        lst.sort(key=lambda r: r.start)

    steps = [a if isinstance(a, AlertEvent) else AlertEvent.model_validate(a) for a in alerts]
    hz = {**DETECTION_HORIZON_S, **(horizons or {})}
    data_end = math.inf if end is None else float(end)
    censored = (
        set()
        if end is None
        else {
            id(t)
            for t in truth
            if not t.must_not_alert and t.start > data_end - hz.get(t.event_type, DEFAULT_HORIZON_S)
        }
    )
    raised = raises(steps)
    # a device judged silent after the data ended went quiet because the run did (a gateway or a cloud left
    # running after a simulation, as ``vigil demo`` does): nothing the truth can judge
    after_end = [a for a in raised if a.event_type is EventType.DEVICE_SILENT and a.time > data_end]
    if after_end:
        raised = [a for a in raised if not (a.event_type is EventType.DEVICE_SILENT and a.time > data_end)]
    cleared_at: dict[str, float] = {}
    for a in steps:
        if a.phase is AlertPhase.CLEARED and a.time < cleared_at.get(a.alert_id, np.inf):
            cleared_at[a.alert_id] = a.time
    last_alert: dict[int, AlertEvent] = {}  # detected event -> its latest alert episode (raise order)

    rows: dict[str, ScoreRow] = {}

    def row(et: EventType) -> ScoreRow:
        return rows.setdefault(et.value, ScoreRow(et.value))

    for t in truth:
        if not t.must_not_alert:
            if id(t) in censored:
                row(t.event_type).censored += 1
            else:
                row(t.event_type).events += 1
    detected: set[int] = set()
    causes: dict[str, int] = defaultdict(int)
    for a in raised:
        r = row(a.event_type)
        r.alerts += 1
        window = [
            t
            for t in positive.get((a.device_id, a.event_type), ())
            if t.start - tolerance_s <= a.time <= t.end + grace_s
        ]
        fresh = [t for t in window if id(t) not in detected]
        if fresh:
            t = fresh[0]
            detected.add(id(t))
            last_alert[id(t)] = a
            r.matched_alerts += 1
            if id(t) in censored:
                r.censored_detected += 1
                continue
            r.detected += 1
            r.delays.append(a.time - t.start)
            if a.severity != t.severity:
                r.severity_mismatches += 1
            continue
        if window:
            r.duplicates += 1
            last_alert[id(max(window, key=lambda w: w.start))] = a  # all in the window are detected
            continue
        r.false_alarms += 1
        cause = next(
            (n for n in nuisance.get(a.device_id, ()) if n.start - tolerance_s <= a.time <= n.end + grace_s),
            None,
        )
        causes[_cause(cause) if cause is not None else "unexplained"] += 1

    for t in truth:
        last = last_alert.get(id(t))
        if last is None or id(t) in censored:
            continue
        c = cleared_at.get(last.alert_id)
        if c is None and t.end > data_end - LATE_CLEAR_S:
            row(t.event_type).clear_censored += 1
        elif c is None:
            row(t.event_type).not_cleared += 1
        else:
            row(t.event_type).clear_delays.append(c - t.end)
    missed = [
        t.to_dict() for t in truth if not t.must_not_alert and id(t) not in detected and id(t) not in censored
    ]
    cens = [t.to_dict() | {"detected": id(t) in detected} for t in truth if id(t) in censored]
    ordered = sorted(rows.values(), key=lambda r: r.event_type)
    for r in ordered:
        k = _kind_of(EventType(r.event_type))
        n = per_kind.get(k, total_devices) if (per_kind and k is not None) else total_devices
        r.finish(n * days)
    overall = ScoreRow("overall")
    for r in ordered:
        for name in (
            "events",
            "detected",
            "alerts",
            "matched_alerts",
            "duplicates",
            "false_alarms",
            "severity_mismatches",
            "not_cleared",
            "censored",
            "censored_detected",
            "clear_censored",
        ):
            setattr(overall, name, getattr(overall, name) + getattr(r, name))
        overall.delays.extend(r.delays)
        overall.clear_delays.extend(r.clear_delays)
    overall.finish(total_devices * days)
    rep = ScoreReport(
        ordered, overall, dict(causes), tolerance_s, grace_s, total_devices, duration_s, missed, end, cens
    )
    rep.ok = _ok_stats(truth, raised, cleared_at, last_alert, tolerance_s, grace_s)
    rep.silent_after_end = len(after_end)
    return rep


def _ok_stats(
    truth: list[TruthRecord],
    raised: list[AlertEvent],
    cleared_at: Mapping[str, float],
    last_alert: Mapping[int, AlertEvent],
    tolerance_s: float,
    grace_s: float,
) -> dict[str, Any]:
    """The "I'm OK" line (module docstring); empty when no truth record has a press."""
    oks = [t for t in truth if t.ok_at is not None and t.event_type is EventType.FALL]
    if not oks:
        return {}
    falls: dict[str, list[float]] = defaultdict(list)
    for a in raised:
        if a.event_type is EventType.FALL:
            falls[a.device_id].append(a.time)

    def paged(t: TruthRecord) -> bool:
        return any(t.start - tolerance_s <= x <= t.end + grace_s for x in falls.get(t.device_id, ()))

    cancelled = [t for t in oks if t.must_not_alert and t.ok_at is not None and t.ok_at <= t.end]
    recovered = [t for t in oks if t.must_not_alert and t.ok_at is not None and t.ok_at > t.end]
    real = [t for t in oks if not t.must_not_alert]
    after: list[float] = []
    for t in real:
        la = last_alert.get(id(t))
        c = cleared_at.get(la.alert_id) if la is not None else None
        if c is not None and t.ok_at is not None:
            after.append(c - t.ok_at)
    n_paged = sum(paged(t) for t in cancelled)
    arr = np.asarray(after, dtype=np.float64)
    return {
        "cancelled": len(cancelled),
        "cancelled_paged": n_paged,
        "false_pages_avoided": len(cancelled) - n_paged,
        "recovered": len(recovered),
        "recovered_paged": sum(paged(t) for t in recovered),
        "paged": len(real),
        "cleared_by_ok": int(np.count_nonzero((arr >= -1.0) & (arr <= 5.0))),
        "clear_after_ok_p50_s": float(np.percentile(arr, 50)) if len(arr) else None,
        "clear_after_ok_p95_s": float(np.percentile(arr, 95)) if len(arr) else None,
    }


def load_alerts_jsonl(path: str) -> list[AlertEvent]:
    """Alerts as JSONL of :class:`AlertEvent` JSON; a bad line names the file and line."""
    from simulators.errors import TruthFormatError

    out: list[AlertEvent] = []
    with open(path, encoding="utf-8") as fh:
        for no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(AlertEvent.model_validate_json(line))
            except ValueError as exc:
                raise TruthFormatError(f"{path}:{no}: not an AlertEvent: {str(exc).splitlines()[0]}") from exc
    return out
