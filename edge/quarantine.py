"""Records the cloud will never take, kept aside so they can never block the ones it will.

Two ways out of the uplink that are not an acknowledgement, both persisted in the outbox's SQLite file,
both bounded, both counted and shown by ``vigil gateway status``:

- **Quarantine**: the cloud stored the batch but *refused* some records in it (``UplinkAck.refused``,
  contract version 2): a device it does not know or that belongs to another gateway (a forged frame, a
  neighbour's device heard over the air), a time outside its window, an alert step naming another
  device's alert. Refusals are final, so those records are moved to the ``quarantine`` table with the
  reason and never re-sent. Unknown devices become an installer report (:func:`unknown_device_report`).
- **Dead letter**: a batch the cloud keeps refusing as a whole (400 / 422 / a 5xx that only this batch
  provokes while other batches are acknowledged). It is split in halves until the bad record is alone,
  and that record goes to ``dead_letter`` after a bounded number of attempts. No batch is retried forever;
  an outage (nothing acknowledged at all) never dead-letters anything.

This module holds the pure parts (turning an ack into quarantine rows) and the metrics; the SQL is in
:class:`edge.outbox.Outbox`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar
from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter

from alerts.contract import Refusal, UplinkAck

#: at most this many bytes of a refused record's data are kept for inspection
MAX_KEPT_BYTES = 64 * 1024
#: rows kept in each of ``quarantine`` and ``dead_letter``; older rows are evicted (counted)
MAX_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    record: str  # "telemetry" | "alert"
    device_id: str
    reason: str
    n: int
    detail: str
    body: bytes | None


def quarantine_rows(ack: UplinkAck, records: Sequence[tuple[bool, bytes]]) -> list[QuarantineRow]:
    """The quarantine rows for ``ack``'s refusals; ``records`` are the batch's ``(is_alert, body)`` rows.

    Telemetry refusals keep the refused device's readings (as a telemetry-block JSON holding only that
    device's rows); alert refusals keep the step itself. Refusals the cloud counted but did not list
    (more than ``MAX_REFUSALS_PER_ACK``) become one row with reason ``unlisted``.
    """
    alerts: dict[tuple[str, str, float], bytes] = {}
    blocks: list[dict[str, object]] = []
    for is_alert, body in records:
        doc = json.loads(body)
        if is_alert:
            alerts[(doc["alert_id"], doc["phase"], float(doc["time"]))] = body
        else:
            blocks.append(doc)
    rows: list[QuarantineRow] = []
    listed_tele = listed_alerts = 0
    for r in ack.refused:
        if r.record == "alert":
            listed_alerts += 1
            key = (r.alert_id or "", r.phase.value if r.phase else "", float(r.time or 0.0))
            rows.append(_row(r, alerts.get(key)))
        else:
            listed_tele += r.count
            rows.append(_row(r, _device_rows(blocks, r.device_id)))
    for record, missing in (
        ("telemetry", ack.telemetry_refused - listed_tele),
        ("alert", ack.alerts_refused - listed_alerts),
    ):
        if missing > 0:
            rows.append(
                QuarantineRow(record, "", "unlisted", missing, "refusals beyond the ack's list", None)
            )
    return rows


def _row(r: Refusal, body: bytes | None) -> QuarantineRow:
    if body is not None and len(body) > MAX_KEPT_BYTES:
        body = body[:MAX_KEPT_BYTES]
    return QuarantineRow(r.record, r.device_id, r.reason, r.count, r.detail, body)


def _device_rows(blocks: list[dict[str, object]], device_id: str) -> bytes | None:
    out = []
    for b in blocks:
        ids = b.get("device_id")
        if not isinstance(ids, list) or device_id not in ids:
            continue
        idx = [i for i, d in enumerate(ids) if d == device_id]
        sub: dict[str, object] = {}
        for k, v in b.items():
            if isinstance(v, list) and len(v) == len(ids):
                sub[k] = [v[i] for i in idx]
            elif k == "channels" and isinstance(v, dict):
                sub[k] = {c: [col[i] for i in idx] for c, col in v.items()}
            else:
                sub[k] = v
        out.append(sub)
    return json.dumps(out).encode() if out else None


class QuarantineMetrics:
    """``vigil_gateway_quarantined_total{reason}`` and ``vigil_gateway_dead_letter_total{lane}``."""

    _by_registry: ClassVar[WeakKeyDictionary[CollectorRegistry, QuarantineMetrics]] = WeakKeyDictionary()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.quarantined = Counter(
            "vigil_gateway_quarantined_total",
            "Records the cloud refused (never re-sent; kept in the outbox's quarantine table), by reason",
            ["reason"],
            registry=registry,
        )
        self.dead_letter = Counter(
            "vigil_gateway_dead_letter_total",
            "Records moved to the dead letter after bounded attempts, by lane",
            ["lane"],
            registry=registry,
        )
        self.splits = Counter(
            "vigil_gateway_batch_splits_total",
            "Batches split in halves to isolate a record the cloud refuses",
            registry=registry,
        )

    @classmethod
    def for_registry(
        cls, registry: CollectorRegistry, *, quarantined: dict[str, int], dead_letter: dict[str, int]
    ) -> QuarantineMetrics:
        """The metrics of ``registry``; the first call starts them at the outbox's persisted counts."""
        with cls._lock:
            found = cls._by_registry.get(registry)
            if found is None:
                found = cls._by_registry[registry] = cls(registry)
                for reason, n in quarantined.items():
                    found.quarantined.labels(reason).inc(n)
                for lane, n in dead_letter.items():
                    found.dead_letter.labels(lane).inc(n)
            return found


def unknown_device_report(rows: Sequence[tuple[str, str, int]], limit: int = 10) -> list[str]:
    """Installer sentences for ``(device_id, reason, readings)`` rows of the quarantine."""
    advice = {
        "unknown_device": "not registered in the cloud: register it (vigil cloud import-devices) "
        "or, if it is not ours, ignore it",
        "not_assigned": "assigned to another gateway in the cloud: a neighbour's device heard over the air, "
        "or fix its gateway_id",
        "wrong_kind": "registered in the cloud as another device kind: fix the registry or devices.csv",
    }
    out = []
    for device_id, reason, n in rows[:limit]:
        if reason in advice:
            out.append(f"device {device_id}: {n} record(s) refused, {advice[reason]}")
    return out


__all__ = [
    "MAX_KEPT_BYTES",
    "MAX_ROWS",
    "QuarantineMetrics",
    "QuarantineRow",
    "quarantine_rows",
    "unknown_device_report",
]
