"""Reachable 500s (issue 11): a huge ``offset`` and a CSV field over 128 KiB are 4xx naming the problem."""

from __future__ import annotations

from tests.cloud.cloudkit import *  # noqa: F403
from tests.cloud.cloudkit import CSV_HEADER, Cloud


async def test_huge_offset_is_a_422_naming_it(cloud: Cloud) -> None:
    for offset in (2**63, 10**30, 1_000_000_001):
        r = await cloud.client.get(f"/api/v1/devices?offset={offset}", headers=cloud.viewer)
        assert r.status_code == 422 and "offset" in r.text, (offset, r.text)
    r = await cloud.client.get("/api/v1/devices?offset=1000000000", headers=cloud.viewer)
    assert r.status_code == 200 and r.json() == []


async def test_csv_field_over_128_kib_is_a_400_naming_it(cloud: Cloud) -> None:
    headers = {**cloud.admin, "content-type": "text/csv"}
    big = "x" * (129 * 1024)
    row = f'70b3d57ed0000301,manhole,"{big}",,,,,,,0,,,,,,,,'
    r = await cloud.client.post(
        "/api/v1/devices/import", content=f"{CSV_HEADER}\n{row}\n".encode(), headers=headers
    )
    assert r.status_code == 400, r.text
    assert r.json()["rows"][0]["line"] == 2 and "field larger than field limit" in r.text
    r = await cloud.client.post("/api/v1/devices/import", content=f'"{big}"\n'.encode(), headers=headers)
    assert r.status_code == 400 and "field larger than field limit" in r.text
