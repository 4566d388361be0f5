"""Which simulated effect made each false alarm: the score's causes, one level deeper.

The scorer attributes a false alarm to a must-not-alert truth record (``nuisance_cooking``,
``nuisance_traffic`` ...), and a label can stand for several effects: ``nuisance_cooking`` is ordinary
cooking (which must page no one) and a pot boiled dry (which ``vigil demo`` injects to be paged now and
then); ``nuisance_traffic`` is a passing truck and a cover left askew by one. A false alarm with no such
record is "unexplained". The fleet's schedule knows more: every effect that ran on the device, the ones
without a truth record too (a rain that stopped short of the overflow line, a link fault's neighbours).
:func:`false_alarm_effects` lists, per false alarm, the effects of its device running within
``window_s`` of it, so a run's false alarms can be told apart: injected nuisances, the stock nuisances
the detector should ride out, and the rest (docs/demo.md "Every false alarm, traced").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from alerts.contract import AlertEvent
from simulators.scorer import DEFAULT_GRACE_S, DEFAULT_TOLERANCE_S, raises
from simulators.truth import TruthRecord

#: the nuisances ``vigil demo`` turns on so that the detector pages some (docs/simulators.md "Effects")
INJECTED_NUISANCES = frozenset({"scorched_pot", "cover_rocked", "band_off_table"})


def false_alarm_effects(
    fleet: Any,
    truth: Iterable[TruthRecord],
    alerts: Iterable[AlertEvent | Mapping[str, Any]],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    grace_s: float = DEFAULT_GRACE_S,
    window_s: float = 900.0,
) -> list[tuple[AlertEvent, tuple[str, ...]]]:
    """Each false alarm (a raised alert in no window ``[start - tolerance_s, end + grace_s]`` of a positive
    truth event of its device and type: the scorer's false alarms, duplicates excluded) with the names of
    the effects scheduled on its device within ``window_s`` of it (sorted; empty when none ran)."""
    positive: dict[tuple[str, str], list[TruthRecord]] = {}
    for t in truth:
        if not t.must_not_alert:
            positive.setdefault((t.device_id, t.event_type.value), []).append(t)
    where: dict[str, tuple[Any, int]] = {}
    for model in fleet.models.values():
        for i, dev in enumerate(model.sites.device_id):
            where[str(dev)] = (model, i)
    out: list[tuple[AlertEvent, tuple[str, ...]]] = []
    for a in raises(alerts):
        windows = positive.get((a.device_id, a.event_type.value), ())
        if any(t.start - tolerance_s <= a.time <= t.end + grace_s for t in windows):
            continue
        names: set[str] = set()
        if a.device_id in where:
            model, i = where[a.device_id]
            s = model.schedule
            for row in np.flatnonzero(s.dev == i):
                if s.start[row] - window_s <= a.time <= s.end[row] + window_s:
                    names.add(model.EFFECTS[int(s.eff[row])].name)
        out.append((a, tuple(sorted(names))))
    return out


def count_by_effect(traced: Iterable[tuple[AlertEvent, tuple[str, ...]]]) -> Counter[str]:
    """``"<alert type> <- <effect>+<effect>"`` -> count (``-`` when no effect ran: truly unexplained)."""
    return Counter(f"{a.event_type.value} <- {'+'.join(names) or '-'}" for a, names in traced)


__all__ = ["INJECTED_NUISANCES", "count_by_effect", "false_alarm_effects"]
