"""Readable text on the console's pages, in Debian chromium: every visible badge, label, note, chip,
state and table cell has a contrast of at least 4.5:1 against what is behind it (WCAG AA for text under
18 px), computed from the browser's own styles, on the alerts list (one alert of each grade), the overview
queue and an incident page, at 1440x900 and 390x844. The worst offenders before: white on the 低 badge's
amber (2.5:1), white on the 中 badge (3.6:1), 已送达 green (3.8:1)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from firmware_bridge.kernel.events import AlertPhase, EventType, Severity
from firmware_bridge.kernel.records import DeviceKind
from tests.cloud.cloudkit import GW2, MANHOLE_1, MANHOLE_2, SMOKE_1, alert_step, batch, body
from tests.dashboards.conftest import LiveCloud, login

AA = 4.5
#: the contrast of each visible text element against the first opaque background behind it
CONTRASTS = """() => {
  const rgba = (c) => {
    const p = c.match(/[\\d.]+/g).map(Number);
    return p.length === 3 ? [...p, 1] : p;
  };
  const lin = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = ([r, g, b]) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  const behind = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgba(getComputedStyle(el).backgroundColor);
      if (c[3] > 0.5) return c;
    }
    return [255, 255, 255, 1];
  };
  const sel = ["badge", "muted", "note", "st", "chip", "age"].map((c) => "main ." + c)
    .concat(["th", "td", "dt", "dd", "small", "time"].map((t) => "main " + t)).join(", ");
  const out = [];
  for (const el of document.querySelectorAll(sel)) {
    const r = el.getBoundingClientRect();
    if (!r.width || !r.height || !el.textContent.trim()) continue;
    const a = lum(rgba(getComputedStyle(el).color)), b = lum(behind(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    out.push([el.className || el.tagName, el.textContent.trim().slice(0, 16), ratio]);
  }
  return out;
}"""


def _seed(cloud: LiveCloud) -> int:
    now = time.time()
    steps = [
        alert_step(
            MANHOLE_1,
            DeviceKind.MANHOLE,
            EventType.COVER_OPEN,
            AlertPhase.RAISED,
            now,
            severity=Severity.HIGH,
        ),
        alert_step(
            MANHOLE_2,
            DeviceKind.MANHOLE,
            EventType.OVERFLOW,
            AlertPhase.RAISED,
            now,
            severity=Severity.MEDIUM,
        ),
        alert_step(
            SMOKE_1,
            DeviceKind.SMOKE_ALARM,
            EventType.LOW_BATTERY,
            AlertPhase.RAISED,
            now,
            severity=Severity.LOW,
        ),
    ]
    medium = steps.pop(1)  # the second cover reports through the second gateway
    cloud.ingest(body(batch(f"b-{uuid.uuid4().hex[:16]}", alerts=steps)))
    cloud.ingest(body(batch(f"b-{uuid.uuid4().hex[:16]}", alerts=[medium], gateway_id=GW2)), gateway=GW2)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        for inc in cloud.api("GET", "/api/v1/incidents", user="disp", params={"limit": 1000})["incidents"]:
            if inc.get("device_id") == MANHOLE_1 and inc.get("is_open"):
                return int(inc["id"])
        time.sleep(0.05)
    raise AssertionError("no incident for the cover")


@pytest.mark.parametrize("viewport", [{"width": 1440, "height": 900}, {"width": 390, "height": 844}])
def test_text_is_readable(contexts: Any, guarded: LiveCloud, viewport: dict[str, int]) -> None:
    incident = _seed(guarded)
    page = contexts(viewport=viewport).new_page()
    login(page, "disp")
    badges: set[str] = set()
    for path in ("/console/alerts", "/console/", f"/console/incidents/{incident}"):
        page.goto(path)
        page.wait_for_load_state("networkidle")
        seen = page.evaluate(CONTRASTS)
        assert seen, f"nothing measured on {path}"
        badges |= {cls for cls, _, _ in seen if "badge" in cls}
        low = [(cls, text, round(c, 2)) for cls, text, c in seen if c < AA]
        assert not low, f"{path} at {viewport['width']} px: text below {AA}:1: {low}"
    assert {"badge sev-1", "badge sev-2", "badge sev-3"} <= badges, badges  # every grade was measured
