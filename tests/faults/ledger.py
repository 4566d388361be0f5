"""The fault suite's common ledger: every fault scenario counts frames the same way and reports the same way.

A scenario records, per run, how many frames were *sent* (offered to the system), *accepted* (the system
took responsibility: a gateway outbox commit, an MQTT PUBACK from the broker, a cloud ack), *stored* (in the
cloud's store at the end, counted distinct), *lost* (accepted but not stored) and *doubled* (stored more than
once). ``Ledger.check()`` fails on any lost or doubled frame. In the long version
(``VIGIL_FAULTS=long``, run by ``scripts/faults --long``) each scenario also writes its ledger to
``bench/results/faults_<scenario>.json`` so the figures can be quoted.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def long_run() -> bool:
    """True for the long version (``scripts/faults --long``), False in CI and ``scripts/test``."""
    return os.environ.get("VIGIL_FAULTS", "") == "long"


def scale(short: int, long: int) -> int:
    """Pick a size: ``short`` in CI, ``long`` for the long version."""
    return long if long_run() else short


@dataclass
class Ledger:
    scenario: str
    kills: int = 0
    restarts: int = 0
    sent: int = 0
    accepted: int = 0
    stored: int = 0
    lost: int = 0
    doubled: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def reconcile(self, accepted: Iterable[Hashable], stored: Iterable[Hashable]) -> None:
        """Count from keys: ``accepted`` = every frame key the system took responsibility for; ``stored`` =
        every row key found in the cloud's store (duplicates included, so doubles are seen)."""
        acc = set(accepted)
        rows = Counter(stored)
        self.accepted = len(acc)
        self.stored = len(rows)
        self.lost = len(acc - set(rows))
        self.doubled = sum(n - 1 for n in rows.values() if n > 1)

    def check(self) -> None:
        self.write()
        assert self.lost == 0, f"{self.scenario}: {self.lost} accepted frame(s) lost ({self.summary()})"
        assert self.doubled == 0, f"{self.scenario}: {self.doubled} frame(s) stored twice ({self.summary()})"

    def summary(self) -> str:
        return (
            f"sent={self.sent} accepted={self.accepted} stored={self.stored} lost={self.lost} "
            f"doubled={self.doubled} kills={self.kills} restarts={self.restarts}"
        )

    def write(self) -> None:
        if not long_run():
            return
        out = ROOT / "bench" / "results" / f"faults_{self.scenario}.json"
        data = asdict(self)
        data["seconds"] = round(time.monotonic() - data.pop("started"), 1)
        data["python"] = platform.python_version()
        data["cpus"] = os.cpu_count()
        data["load_average_1m"] = round(os.getloadavg()[0], 2)
        out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
