"""The responder's verdict on a handled case (docs/loop.md, "The responder's verdict"): ``outcome`` is
``real`` (真实事件), ``nuisance`` (扰动（烹饪、蒸汽等）) or ``false_alarm`` (误报), given with the resolve
action (the console's ``handle``, a responder's resolved link), stored on the incident, shown by the
incident API, and counted in the KPIs as false-alarm and nuisance rates of the judged cases."""

from __future__ import annotations

import asyncio
import csv
import io
from typing import Any

import pytest

from alerts.loop.stages import Action, Command
from cloud.errors import BadRequestError
from cloud.loop.service import Report as LoopReport
from cloud.notify.links import Purpose
from tests.cloud.cloudkit import Cloud


async def handled_case(c: Cloud, outcome: str | None, *, responder: str = "li") -> int:
    loop = c.app.state.loop
    rep = LoopReport(
        type="fire", description="厨房冒烟", reporter="disp", lat=39.98, lon=116.31, register=True
    )
    incident_id = int(await asyncio.to_thread(loop.report, rep, role="dispatcher"))
    await asyncio.to_thread(loop.act, incident_id, Command(Action.DISPATCH, "disp", assignee=responder))
    await asyncio.to_thread(loop.act, incident_id, Command(Action.ACCEPT, responder))
    body: dict[str, Any] = {"action": "handle", "reason": "已查看", "on_behalf_of": responder}
    if outcome is not None:
        body["outcome"] = outcome
    r = await c.client.post(f"/api/v1/incidents/{incident_id}/actions", json=body, headers=c.dispatcher)
    assert r.status_code == 200, r.text
    return incident_id


async def test_the_console_resolve_stores_the_verdict_and_the_api_shows_it(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    incident_id = await handled_case(c, "false_alarm")
    r = await c.client.get(f"/api/v1/incidents/{incident_id}?language=zh", headers=c.viewer)
    inc = r.json()["incident"]
    assert (inc["stage"], inc["outcome"], inc["outcome_label"]) == ("handled", "false_alarm", "误报")
    r = await c.client.get(f"/api/v1/incidents/{incident_id}?language=en", headers=c.viewer)
    assert r.json()["incident"]["outcome_label"] == "false alarm"
    (handle,) = [e for e in r.json()["timeline"] if e["action"] == "handle"]
    assert handle["detail"]["outcome"] == "false_alarm"
    # reopened work is judged anew: the verdict goes with the handling
    loop = c.app.state.loop
    await asyncio.to_thread(loop.act, incident_id, Command(Action.REJECT, "disp", reason="没处理完"))
    inc = (await c.client.get(f"/api/v1/incidents/{incident_id}?language=zh", headers=c.viewer)).json()[
        "incident"
    ]
    assert inc["outcome"] is None and inc["outcome_label"] is None


async def test_an_outcome_is_refused_off_the_resolve_action_or_outside_the_vocabulary(
    lc_sqlite: Cloud,
) -> None:
    c = lc_sqlite
    incident_id = await handled_case(c, None)
    url = f"/api/v1/incidents/{incident_id}/actions"
    r = await c.client.post(url, json={"action": "verify", "outcome": "real"}, headers=c.dispatcher)
    assert r.status_code == 400 and "handle" in r.json()["detail"], r.text
    r = await c.client.post(url, json={"action": "verify", "outcome": "maybe"}, headers=c.dispatcher)
    assert r.status_code == 422, r.text
    inc = (await c.client.get(f"/api/v1/incidents/{incident_id}?language=zh", headers=c.viewer)).json()[
        "incident"
    ]
    assert (inc["stage"], inc["outcome"]) == ("handled", None)


async def test_a_resolved_link_carries_the_verdict(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    loop, desk = c.app.state.loop, c.app.state.notify.responders
    rep = LoopReport(type="fire", description="蒸汽", reporter="disp", lat=39.98, lon=116.31, register=True)
    incident_id = int(await asyncio.to_thread(loop.report, rep, role="dispatcher"))
    await asyncio.to_thread(loop.act, incident_id, Command(Action.DISPATCH, "disp", assignee="li"))
    links = c.app.state.notify.links

    def press(purpose: Purpose, outcome: str | None, note: str = "") -> Any:
        token = links.token(purpose, str(incident_id), "li", now=c.clock.now())
        return desk.act_by_link(token, note=note, now=c.clock.now(), outcome=outcome)

    with pytest.raises(BadRequestError, match=r"^只有办结链接"):
        await asyncio.to_thread(press, Purpose.ACCEPT, "real")
    await asyncio.to_thread(press, Purpose.ACCEPT, None)
    await asyncio.to_thread(press, Purpose.RESOLVED, "nuisance", "炒菜油烟")
    inc = (await c.client.get(f"/api/v1/incidents/{incident_id}?language=zh", headers=c.viewer)).json()[
        "incident"
    ]
    assert (inc["stage"], inc["outcome"], inc["outcome_label"]) == (
        "handled",
        "nuisance",
        "扰动（烹饪、蒸汽等）",
    )


async def test_the_kpis_count_false_alarm_and_nuisance_rates_of_judged_cases(lc_sqlite: Cloud) -> None:
    c = lc_sqlite
    for outcome in ("false_alarm", "false_alarm", "nuisance", "real", None):
        await handled_case(c, outcome)
    (row,) = (await c.client.get("/api/v1/kpi", headers=c.viewer)).json()["rows"]
    assert (row["due"], row["judged"], row["real"], row["nuisance"], row["false_alarm"]) == (5, 4, 1, 1, 2)
    assert (row["false_alarm_rate"], row["nuisance_rate"]) == (0.5, 0.25)
    r = await c.client.get("/api/v1/kpi?format=csv", headers=c.viewer)
    (line,) = list(csv.DictReader(io.StringIO(r.text)))
    assert (line["false_alarm_rate"], line["nuisance_rate"], line["judged"]) == ("0.5", "0.25", "4")
    assert line["due"] == "5"
    by = (await c.client.get("/api/v1/kpi?by=responder", headers=c.viewer)).json()["rows"]
    assert [(x["group"], x["false_alarm_rate"]) for x in by] == [("li", 0.5)]
