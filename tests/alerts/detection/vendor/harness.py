"""Run vendor frames through the real gateway path (batch decode + :class:`DetectionEngine` + ``tick``) and
score the alerts against ground truth written by hand per scenario.

A *frame* is ``(device_id, time, payload bytes)``. Frames are decoded in time windows of ``window_s``
(the gateway closes a batch after 50 ms or 2,000 frames; a window is coarser but keeps the per-device
order), and ``tick`` runs at every window's end and at least every ``window_s`` of quiet time, as the
gateway's ~1 s tick would. An alert step caused by a frame is stamped with that frame's time (a live
gateway decides within ~100 ms); one raised by ``tick`` keeps the tick's time, so a delay that comes from
waiting (a confirmation deadline) is counted in full.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alerts.contract import AlertEvent
from alerts.detection.engine import DetectionEngine
from firmware_bridge.kernel.events import LIFE_SAFETY as _KERNEL_LIFE_SAFETY
from firmware_bridge.kernel.events import AlertPhase, EventType
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.registry import kind_of_payload, spec

#: issue 10 counts a displaced cover (a hole in the road) among the life-safety events
LIFE_SAFETY = _KERNEL_LIFE_SAFETY | {EventType.COVER_DISPLACED}


@dataclass(frozen=True)
class Frame:
    device_id: str
    time: float
    payload: bytes


@dataclass(frozen=True)
class Truth:
    """One scenario on one device, written by hand from the standards' figures.

    ``event_type`` set: the engine must raise it between ``start - 60 s`` and ``end + grace``; ``reveal``
    is the first frame that carries the evidence (delays count from there). ``event_type`` None: a
    nuisance (cooking, a truck, a recovered fall, ...) that must page no one. ``allowed``: other types
    that may legitimately accompany the scenario (CO during a smouldering fire) and count neither way.
    """

    device_id: str
    kind: DeviceKind
    variant: str
    scenario: str
    start: float
    end: float
    event_type: EventType | None = None
    reveal: float | None = None
    allowed: frozenset[EventType] = frozenset()


@dataclass
class Fleet:
    frames: list[Frame] = field(default_factory=list)
    truth: list[Truth] = field(default_factory=list)
    device_days: dict[str, float] = field(default_factory=dict)  # per variant
    variant_of: dict[str, str] = field(default_factory=dict)  # device -> variant

    def extend(self, other: Fleet) -> None:
        self.frames += other.frames
        self.truth += other.truth
        for k, v in other.device_days.items():
            self.device_days[k] = self.device_days.get(k, 0.0) + v
        self.variant_of.update(other.variant_of)


def run(
    frames: Sequence[Frame],
    engine: DetectionEngine,
    *,
    window_s: float = 5.0,
    tick_s: float = 15.0,
    dense_s: float = 60.0,
    coarse_tick_s: float = 300.0,
    until: float | None = None,
) -> list[AlertEvent]:
    """Every frame through decode + engine, in time windows, with ticks; the alert steps in order.

    Ticks run every ``tick_s`` for ``dense_s`` after a window (short confirmation deadlines), then every
    ``coarse_tick_s`` (silence, long deadlines): a live gateway ticks every second, so a long deadline
    measured here can be up to ``coarse_tick_s`` late, never early. Ticks go on until ``until`` (the end
    of the fleet's run; default: two hours after the last frame, for pending deadlines).
    """
    order = sorted(frames, key=lambda f: f.time)
    out: list[AlertEvent] = []
    i, n = 0, len(order)
    last_w = -math.inf
    t_tick = order[0].time if order else 0.0
    while i < n:
        w_end = order[i].time + window_s
        j = i
        while j < n and order[j].time < w_end:
            j += 1
        while t_tick < order[i].time:  # quiet time: keep ticking (confirmation deadlines, silence)
            out += engine.tick(t_tick)
            t_tick += tick_s if t_tick - last_w < dense_s else coarse_tick_s
        by_kind: dict[DeviceKind, list[Frame]] = defaultdict(list)
        for f in order[i:j]:
            by_kind[kind_of_payload(f.payload)].append(f)
        for kind, fs in by_kind.items():
            batch, rejects = spec(kind).codec.decode_many(
                [f.payload for f in fs],
                device_ids=[f.device_id for f in fs],
                times=np.array([f.time for f in fs]),
            )
            if rejects:
                raise AssertionError(f"vendor frames rejected by the gateway: {rejects[:3]}")
            steps = engine.process(batch, now=w_end)
            out += [s.model_copy(update={"time": s.frame_time}) for s in steps]
        out += engine.tick(w_end)
        last_w = w_end
        t_tick = w_end + tick_s
        i = j
    end = t_tick + 2 * 3600.0 if until is None else until  # let pending deadlines run out
    while t_tick < end:
        out += engine.tick(t_tick)
        t_tick += tick_s if t_tick - last_w < dense_s else coarse_tick_s
    return out


@dataclass
class Row:
    events: int = 0
    found: int = 0
    delays: list[float] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.found / self.events if self.events else 1.0

    def delay(self, q: float) -> float:
        return float(np.percentile(self.delays, q)) if self.delays else float("nan")


@dataclass
class Score:
    by_type: dict[str, Row]
    by_variant: dict[str, Row]
    false_pages: list[tuple[str, str, str, str]]  # (variant, event type, cause, device)
    device_days: dict[str, float]

    @property
    def total_device_days(self) -> float:
        return sum(self.device_days.values())

    def false_per_1000(self, variant: str | None = None) -> float:
        fp = [f for f in self.false_pages if variant is None or f[0] == variant]
        dd = self.total_device_days if variant is None else self.device_days.get(variant, 0.0)
        return 1000.0 * len(fp) / dd if dd else 0.0

    def life_safety(self) -> Row:
        agg = Row()
        for et, r in self.by_type.items():
            if EventType(et) in LIFE_SAFETY:
                agg.events += r.events
                agg.found += r.found
                agg.delays += r.delays
                agg.missed += r.missed
        return agg

    def misses_per_1000(self) -> float:
        ls = self.life_safety()
        dd = self.total_device_days
        return 1000.0 * (ls.events - ls.found) / dd if dd else 0.0

    def causes(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for _v, _et, cause, _d in self.false_pages:
            out[cause] += 1
        return dict(out)

    def as_dict(self) -> dict[str, Any]:
        def row(r: Row) -> dict[str, Any]:
            return {
                "events": r.events,
                "found": r.found,
                "recall": round(r.recall, 4),
                "delay_p50_s": _r(r.delay(50)),
                "delay_p95_s": _r(r.delay(95)),
                "missed": r.missed[:10],
            }

        ls = self.life_safety()
        return {
            "device_days": round(self.total_device_days, 1),
            "life_safety": row(ls),
            "misses_per_1000_device_days": round(self.misses_per_1000(), 3),
            "false_pages": len(self.false_pages),
            "false_pages_per_1000_device_days": round(self.false_per_1000(), 3),
            "false_pages_by_cause": self.causes(),
            "false_pages_per_1000_by_variant": {
                v: round(self.false_per_1000(v), 3) for v in sorted(self.device_days)
            },
            "by_event_type": {k: row(v) for k, v in sorted(self.by_type.items())},
            "life_safety_by_variant": {k: row(v) for k, v in sorted(self.by_variant.items())},
        }


def _r(x: float) -> float | None:
    return None if x != x else round(x, 1)


def score(
    truth: Iterable[Truth],
    alerts: Iterable[AlertEvent],
    device_days: Mapping[str, float],
    variant_of: Mapping[str, str],
    *,
    grace_s: float = 600.0,
) -> Score:
    """Match RAISED alerts to truth; every unmatched raise is a false page, attributed to a scenario."""
    truth = list(truth)
    raised = [a for a in alerts if a.phase is AlertPhase.RAISED]
    by_dev: dict[str, list[Truth]] = defaultdict(list)
    for tr in truth:
        by_dev[tr.device_id].append(tr)
    used: set[int] = set()
    by_type: dict[str, Row] = defaultdict(Row)
    by_variant: dict[str, Row] = defaultdict(Row)
    for tr in truth:
        if tr.event_type is None:
            continue
        row = by_type[tr.event_type.value]
        row.events += 1
        vrow = by_variant[tr.variant] if tr.event_type in LIFE_SAFETY else Row()
        vrow.events += 1
        hit = [
            (k, a)
            for k, a in enumerate(raised)
            if a.device_id == tr.device_id
            and a.event_type is tr.event_type
            and tr.start - 60.0 <= a.time <= tr.end + grace_s
        ]
        for k, _a in hit:
            used.add(k)
        if hit:
            row.found += 1
            vrow.found += 1
            first = min(a.time for _k, a in hit)
            d = max(0.0, first - (tr.reveal if tr.reveal is not None else tr.start))
            row.delays.append(d)
            vrow.delays.append(d)
        else:
            label = f"{tr.variant}/{tr.scenario}@{tr.device_id}"
            row.missed.append(label)
            vrow.missed.append(label)
    false_pages: list[tuple[str, str, str, str]] = []
    for k, a in enumerate(raised):
        if k in used:
            continue
        near = [tr for tr in by_dev.get(a.device_id, []) if tr.start - 60.0 <= a.time <= tr.end + grace_s]
        if any(a.event_type in tr.allowed or a.event_type is tr.event_type for tr in near):
            continue  # a second raise inside a true episode, or a type the scenario allows
        cause = near[0].scenario if near else "unexplained"
        false_pages.append((variant_of.get(a.device_id, "?"), a.event_type.value, cause, a.device_id))
    return Score(dict(by_type), dict(by_variant), false_pages, dict(device_days))


def format_score(name: str, s: Score) -> str:
    ls = s.life_safety()
    lines = [
        f"{name}: {s.total_device_days:,.0f} device-days; life-safety recall {ls.found}/{ls.events} "
        f"({100 * ls.recall:.1f} %), misses {s.misses_per_1000():.2f} / 1000 device-days, "
        f"false pages {len(s.false_pages)} = {s.false_per_1000():.2f} / 1000 device-days",
        f"  {'event type':<18}{'events':>7}{'found':>7}{'recall':>8}{'p50 s':>8}{'p95 s':>8}",
    ]
    for et, r in sorted(s.by_type.items()):
        pct = 100 * r.recall
        lines.append(f"  {et:<18}{r.events:>7}{r.found:>7}{pct:>7.1f}%{r.delay(50):>8.0f}{r.delay(95):>8.0f}")
    lines.append(f"  {'variant':<24}{'LS events':>10}{'found':>7}{'false/1000dd':>14}")
    for v in sorted(s.device_days):
        r = s.by_variant.get(v, Row())
        lines.append(f"  {v:<24}{r.events:>10}{r.found:>7}{s.false_per_1000(v):>14.2f}")
    if s.false_pages:
        lines.append(
            "  false pages by cause: " + ", ".join(f"{k} {v}" for k, v in sorted(s.causes().items()))
        )
    misses = ls.missed[:8]
    if misses:
        lines.append("  missed: " + ", ".join(misses))
    return "\n".join(lines)
