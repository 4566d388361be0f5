"""Ground truth: what really happened in a simulated fleet, as JSONL the scorer reads.

One record per episode: ``{"device_id","kind","event_type","start","end","severity"}`` (and
``"handled": true`` when a responder on site ended it, ``vigil demo``) with UTC epoch
seconds in simulated time and the severity *name* from :class:`firmware_bridge.kernel.events.Severity`. A
severity of
``NONE`` marks an episode that must not page anyone: every ``nuisance_*`` label, and a fall after which
the person got up again within seconds (``fall`` + ``NONE``; see ``docs/simulators.md``).

Why JSONL: streams, appends, diffs and greps well; one bad line is reported with its line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from firmware_bridge.kernel.events import EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from simulators.errors import TruthFormatError


@dataclass(frozen=True, slots=True)
class TruthRecord:
    """One ground-truth episode."""

    device_id: str
    kind: DeviceKind
    event_type: EventType
    start: float
    end: float
    severity: Severity
    #: ended by a responder on site (``vigil demo``: the cover reseated, the wearer helped up), not by
    #: itself; ``end`` is then when the responder ended it
    handled: bool = False
    #: a wristband fall in which the wearer pressed "I'm OK" (flag bit 8, firmware >= 1.7): the press's
    #: time. With severity NONE the fall was cancelled within the band's 30 s cancel window (or the
    #: wearer had got up already) and must not page; with HIGH it is a real fall, paged, then cleared by
    #: the press (docs/simulators.md "I'm OK")
    ok_at: float | None = None

    @property
    def must_not_alert(self) -> bool:
        """True for nuisances and other episodes whose expected severity is NONE."""
        return self.severity is Severity.NONE or self.event_type.is_nuisance

    def to_dict(self) -> dict[str, object]:
        return {
            "device_id": self.device_id,
            "kind": self.kind.value,
            "event_type": self.event_type.value,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "severity": self.severity.name,
            **({"handled": True} if self.handled else {}),
            **({"ok_at": round(self.ok_at, 3)} if self.ok_at is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TruthRecord:
        start = float(data["start"])  # type: ignore[arg-type]
        end = float(data["end"])  # type: ignore[arg-type]
        if end < start:
            raise ValueError(f"end {end} is before start {start}")
        return cls(
            device_id=str(data["device_id"]),
            kind=DeviceKind(str(data["kind"])),
            event_type=EventType(str(data["event_type"])),
            start=start,
            end=end,
            severity=Severity.parse(data["severity"]),  # type: ignore[arg-type]
            handled=bool(data.get("handled", False)),
            ok_at=None if data.get("ok_at") is None else float(data["ok_at"]),  # type: ignore[arg-type]
        )


def sort_key(r: TruthRecord) -> tuple[float, str, str]:
    return (r.start, r.device_id, r.event_type.value)


def write_truth(records: Iterable[TruthRecord], path: Path) -> int:
    """Write records as JSONL sorted by start; returns the count."""
    rows = sorted(records, key=sort_key)
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r.to_dict(), separators=(",", ":")) + "\n")
    return len(rows)


def load_truth(path: Path | str) -> list[TruthRecord]:
    """Read a truth JSONL file. A bad line raises :class:`TruthFormatError` naming file and line."""
    p = Path(path)
    out: list[TruthRecord] = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(TruthRecord.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                raise TruthFormatError(f"{p}:{lineno}: not a truth record: {exc}") from exc
    return out
