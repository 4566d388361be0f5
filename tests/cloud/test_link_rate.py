"""Position reads through one responder link are rate-limited (cloud/api/links.py, cloud/limits.py).

A personal link to an open wristband case shows where the wearer is (``GET /api/v1/links/{token}`` and its
``/position`` refresh). A leaked link must not be polled continuously: per link, 12 reads at once and 6 a
minute after that (the page itself reads twice a minute); over that, 429 with ``Retry-After`` and
``reason: link_reads``, no position in the body, counted on ``/metrics``. Other links (a group's, one
person's other link), forged tokens and the page's own pace are not affected. Through the real app over
HTTP on the cloud's controlled clock (the limit runs on the cloud's clock), with the case fixtures of
tests/cloud/notify/test_responder_position.py.
"""

from __future__ import annotations

from cloud.limits import LINK_READS_BURST, LINK_READS_PER_MINUTE
from cloud.notify.links import Purpose
from tests.cloud.cloudkit import T0, Cloud
from tests.cloud.notify.conftest import notify_template, sqlite_url
from tests.cloud.notify.test_responder_position import (
    FLAG,
    PARK,
    WORN_FIX,
    band,
    cloud,
    no_whereabouts,
    open_case,
)

__all__ = ["cloud", "notify_template", "sqlite_url"]  # the fixtures, imported to be used here

BURST = int(LINK_READS_BURST)


def limited(text: str) -> float:
    """The value of ``vigil_cloud_rate_limited_requests_total{limit="link_reads"}`` in a /metrics text."""
    for line in text.splitlines():
        if line.startswith('vigil_cloud_rate_limited_requests_total{limit="link_reads"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_link_polled_too_often_gets_429_with_retry_after_and_no_position(cloud: Cloud) -> None:
    c = cloud
    incident_id = await open_case(c, band((1, T0 + 9.0, *PARK, WORN_FIX | FLAG["fall"])))
    links = c.app.state.notify.links
    token = links.token(Purpose.ON_THE_WAY, str(incident_id), "user:7", now=c.clock.now())
    other = links.token(Purpose.ON_THE_WAY, str(incident_id), "user:8", now=c.clock.now())
    before = limited((await c.client.get("/metrics")).text)

    # a page load and reloads: the burst is served (the clock does not move)
    r = await c.client.get(f"/api/v1/links/{token}")
    assert r.status_code == 200, r.text
    for _ in range(BURST - 1):
        r = await c.client.get(f"/api/v1/links/{token}/position")
        assert r.status_code == 200, r.text
    # the next read of the same link, either endpoint: 429, a reason, when to retry, nothing of the wearer
    for path in (f"/api/v1/links/{token}/position", f"/api/v1/links/{token}"):
        r = await c.client.get(path)
        assert r.status_code == 429, r.text
        got = r.json()
        assert got["error"] == "rate_limited" and got["reason"] == "link_reads", got
        assert "过于频繁" in got["detail"] and "too often" in got["detail"]
        assert r.headers["retry-after"] == str(round(60 / LINK_READS_PER_MINUTE))  # one read's refill
        no_whereabouts(r.text)
        assert f"{PARK[0]:.6f}" not in r.text
    assert limited((await c.client.get("/metrics")).text) == before + 2
    # the phone page of the same link says so (in Chinese first) and shows nothing of the wearer
    page = await c.client.get(f"/console/l/{token}")
    assert page.status_code == 429 and "过于频繁" in page.text, page.text
    no_whereabouts(page.text)
    assert limited((await c.client.get("/metrics")).text) == before + 3

    # another person's link to the same case has its own allowance
    assert (await c.client.get(f"/api/v1/links/{other}/position")).status_code == 200
    # after Retry-After one more read, then refused again: 6 a minute sustained, not a new burst
    c.clock.advance(60 / LINK_READS_PER_MINUTE)
    assert (await c.client.get(f"/api/v1/links/{token}/position")).status_code == 200
    assert (await c.client.get(f"/api/v1/links/{token}/position")).status_code == 429
    # a minute later: the page's own pace (a read every 30 s) is always served
    c.clock.advance(60.0)
    for _ in range(20):
        assert (await c.client.get(f"/api/v1/links/{token}/position")).status_code == 200
        c.clock.advance(30.0)


async def test_group_links_and_forged_tokens_are_not_limited(cloud: Cloud) -> None:
    """A group's link (a chat robot: many readers of one link) shows no position: not limited. A forged
    token is refused (403) before the limit, so it can neither be throttled into a 429 nor mint buckets."""
    c = cloud
    incident_id = await open_case(c, band((1, T0 + 9.0, *PARK, WORN_FIX | FLAG["fall"])))
    links = c.app.state.notify.links
    group = links.token(Purpose.ACCEPT, str(incident_id), "group:g02", now=c.clock.now())
    for _ in range(3 * BURST):
        r = await c.client.get(f"/api/v1/links/{group}")
        assert r.status_code == 200, r.text
    token = links.token(Purpose.ACCEPT, str(incident_id), "user:7", now=c.clock.now())
    forged = token[:-2] + ("xx" if not token.endswith("xx") else "yy")
    for _ in range(2 * BURST):
        assert (await c.client.get(f"/api/v1/links/{forged}/position")).status_code == 403
    kept = getattr(c.app.state, "vigil_link_reads", None)
    assert kept is None or len(kept._buckets) == 0  # nothing kept for a group's or a forged token
    assert (await c.client.get(f"/api/v1/links/{token}/position")).status_code == 200
