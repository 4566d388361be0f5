"""The "nobody to notify" error line is rate-limited per target; the pages themselves are not.

Found in ``vigil demo``: with an empty roster every page of the closed loop wrote one error line (98 in two
simulated hours), drowning the story and, in production, the journal. A misconfigured target must stay
loud, so the worker still writes a line at once and again every ``NOBODY_LOG_EVERY_S`` with the count of
pages it did not log in between; every page is still settled ``failed`` and raised in-app to operators.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from cloud.notify.models import InApp
from cloud.notify.planner import NotifyRequest
from cloud.notify.worker import NOBODY_LOG_EVERY_S
from tests.cloud.notify.kit import fake_config, notify_kit, page


class Intents:
    """The loop's intent table, reduced to the two calls the worker makes."""

    def __init__(self) -> None:
        self.pending: list[NotifyRequest] = []
        self.settled: list[tuple[str, str, str]] = []

    def add(self, incident_id: str, kind: str, target: str) -> None:
        r = page(incident_id, target=target, kind=kind)
        key = f"{incident_id}:1:0:0:{kind}:{target}"
        self.pending.append(NotifyRequest(r.facts, r.target_kind, r.target_id, r.step, (), key))

    def claim(self, *, now: float, limit: int) -> list[NotifyRequest]:
        out, self.pending = self.pending, []
        return out

    def settle(self, intent_key: str, state: str, *, now: float, detail: str = "") -> None:
        self.settled.append((intent_key, state, detail))


def nobody_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, int]]:
    return [
        (str(getattr(r, "target", "")), str(getattr(r, "incident", "")), int(getattr(r, "suppressed", -1)))
        for r in caplog.records
        if r.name == "cloud.notify.worker" and r.getMessage() == "nobody to notify"
    ]


async def test_nobody_to_notify_is_logged_once_per_target_per_window_with_a_count(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="cloud.notify.worker")
    async with notify_kit(tmp_path, sqlite_url, fake_config()) as kit:
        w = kit.service.worker
        w.source = intents = Intents()
        # five pages for a role nobody holds, one intake each (as the loop writes them), 60 s apart
        for i in range(5):
            intents.add(str(100 + i), "role", "municipal_crew")
            assert await w.intake_once() == 0
            kit.clock.advance(60)
        # another target is logged on its own, even inside the first one's window
        intents.add("200", "role", "traffic_police")  # (a missing desk group now goes to operators)
        await w.intake_once()
        assert nobody_lines(caplog) == [("role:municipal_crew", "100", 0), ("role:traffic_police", "200", 0)]

        # the window is over: the next page is logged again, with the four pages not logged since
        kit.clock.advance(NOBODY_LOG_EVERY_S)
        intents.add("105", "role", "municipal_crew")
        await w.intake_once()
        assert nobody_lines(caplog)[-1] == ("role:municipal_crew", "105", 4)
        assert len(nobody_lines(caplog)) == 3

        # what operators see is unchanged: every page settled failed and raised in-app
        assert len(intents.settled) == 7
        assert {state for _, state, _ in intents.settled} == {"failed"}
        assert ("105:1:0:0:role:municipal_crew", "failed", "nobody to notify (role:municipal_crew)") in (
            intents.settled
        )
        with kit.db.read() as s:
            raised = s.scalars(select(InApp.incident_id).where(InApp.kind == "failure")).all()
        assert sorted(raised) == ["100", "101", "102", "103", "104", "105", "200"]
        failures = kit.service.worker.metrics.failures._value.get()
        assert failures == 7
