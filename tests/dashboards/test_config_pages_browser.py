"""The three rules pages in words (值班排班, 处置时限, 接警台设置) on a phone (390x844) and on a desk
(1440x900), in Debian chromium: the page does not scroll sideways, the Chinese words are on screen inside
the viewport's width, and the rows a dispatcher reads are there (each rotation with its next hand-over,
the overrides, the responders; each urgency's limits; the desk's reminder). Both a dispatcher (the JSON
folded away, here unfolded) and an administrator (the JSON in an editor) are looked at. Screenshots go to
``$VIGIL_CONSOLE_SHOTS`` (or the test's temporary directory).
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.dashboards.conftest import LiveCloud, login

SH = ZoneInfo("Asia/Shanghai")
CJK = re.compile(r"[\u4e00-\u9fff]")


def _roster() -> dict[str, Any]:
    """Long names, a window over midnight, an office window, a swap and a leave: the widest roster page."""
    today = datetime.fromtimestamp(time.time(), SH).replace(hour=0, minute=0, second=0, microsecond=0)
    midnight = today.timestamp()
    now = time.time()
    people = [
        ("gw-1", "网格员王建国（第三网格责任区）", ["grid_worker"], ["G01", "G02", "G03"]),
        ("gw-2", "网格员李秀英", ["grid_worker"], ["G01", "G02", "G03"]),
        ("pm-1", "物业服务中心张经理", ["property_management"], ["*"]),
        ("pm-2", "物业服务中心赵主管", ["property_management"], ["*"]),
        ("ct-1", "值班接警员一号席位", ["call_taker"], ["*"]),
        ("ct-2", "值班接警员二号席位", ["call_taker"], ["*"]),
    ]
    return {
        "zone": "Asia/Shanghai",
        "responders": [{"id": i, "name": n, "roles": r, "zones": z} for i, n, r, z in people],
        "rotations": [
            {
                "id": "night-grid-G01-with-a-long-identifier",
                "role": "grid_worker",
                "zone": "G01",
                "participants": ["gw-1", "gw-2"],
                "start": (today - timedelta(hours=4)).timestamp(),
                "shift_s": 7 * 3600,
                "hours": "22:00-06:00",
            },
            {
                "id": "office",
                "role": "property_management",
                "participants": ["pm-1", "pm-2"],
                "start": midnight,
                "hours": "09:00-17:00",
            },
            {"id": "desk", "role": "call_taker", "participants": ["ct-1", "ct-2"], "shift_s": 0},
        ],
        "overrides": [
            {
                "responder": "gw-1",
                "by": "gw-2",
                "start": now - 600,
                "end": now + 3600,
                "reason": "家中有事临时换班",
            },
            {"responder": "ct-2", "by": None, "start": now + 86400, "end": now + 3 * 86400},
        ],
    }


#: per page, the rows a reader must find (selector, Chinese words it must show)
ROWS: dict[str, list[tuple[str, str]]] = {
    "roster": [
        ("#on-duty tbody tr", "网格员"),
        ('#rotations tr[data-rotation="night-grid-G01-with-a-long-identifier"]', "下次交班"),
        ('#rotations tr[data-rotation="office"]', "仅每天 09:00-17:00 值班"),
        ('#rotations tr[data-rotation="desk"]', "全体同时值班"),
        ("#overrides tbody tr", "网格员李秀英替网格员王建国（第三网格责任区）值班"),
        ("#responders tbody tr", "物业服务中心张经理"),
    ],
    "sla": [
        ('#sla tr[data-urgency="critical"]', "非常紧急"),
        ('#sla tr[data-urgency="urgent"]', "紧急"),
        ('#sla tr[data-urgency="normal"]', "按工作时间计"),
    ],
    "desk": [("#desk li", "手环佩戴者家属电话未接通时")],
}


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("VIGIL_CONSOLE_SHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _inside(page: Any, selector: str, width: int) -> None:
    """Every element matching ``selector`` is shown, and lies within the viewport's width."""
    loc = page.locator(selector)
    assert loc.count() >= 1, selector
    for i in range(loc.count()):
        el = loc.nth(i)
        assert el.is_visible(), selector
        box = el.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (selector, box)


@pytest.mark.parametrize("user", ["disp", "admin"])
@pytest.mark.parametrize(("width", "height"), [(390, 844), (1440, 900)])
def test_rules_pages_fit_and_read_in_chinese(
    contexts: Any, guarded: LiveCloud, tmp_path: Path, width: int, height: int, user: str
) -> None:
    guarded.api("PUT", "/api/v1/loop/config/roster", json=_roster())
    page = contexts(viewport={"width": width, "height": height}).new_page()
    login(page, user, to="/console/config/roster")
    for name, rows in ROWS.items():
        page.goto(f"/console/config/{name}")
        if user != "admin":
            page.locator("details summary").click()  # the JSON unfolded is on the page too
            assert page.locator("pre#document").is_visible()
        else:
            assert page.locator("textarea#document").is_visible()
        scroll, client = page.evaluate(
            "[document.scrollingElement.scrollWidth, document.scrollingElement.clientWidth]"
        )
        page.screenshot(path=str(_shots(tmp_path) / f"config-{name}-{user}-{width}.png"), full_page=True)
        assert scroll <= client, f"/console/config/{name} at {width} px scrolls sideways: {scroll} > {client}"
        heading = page.locator("h1")
        assert heading.inner_text() == "规则与排班"
        _inside(page, "h1", width)
        _inside(page, "nav.tabs a", width)
        for selector, words in rows:
            _inside(page, selector, width)
            text = " ".join(page.locator(selector).all_inner_texts())
            assert words in text, (name, selector, text)
            assert CJK.search(text), (name, selector, text)
