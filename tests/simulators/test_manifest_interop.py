"""devices.csv is a contract: the gateway's device list and the cloud's bulk import both accept it as written.

Guards the column names and value formats fixed in issue #3 (docs/simulators.md, "Neighbourhood and
manifest") against drift on either side.
"""

from __future__ import annotations

from pathlib import Path

from firmware_bridge.kernel.records import DeviceKind as K
from simulators.fleet import Fleet


def test_gateway_and_cloud_read_devices_csv(tmp_path: Path) -> None:
    from cloud.registry import parse_csv
    from edge.sources.devices import load_devices

    fleet = Fleet.build({K.MANHOLE: 30, K.SMOKE_ALARM: 20, K.WRISTBAND: 20}, seed=12)
    fleet.write_manifest(tmp_path)
    path = tmp_path / "devices.csv"
    gw = load_devices(path)
    assert len(gw) == 70
    by_addr = gw.by_dev_addr()
    for row in fleet.manifest_rows():
        assert row["device_id"] in gw
        assert int(str(row["dev_addr"]), 16) in by_addr
    cloud = parse_csv(path.read_text(encoding="utf-8"))
    assert len(cloud) == 70
    on_road = {d.device_id: d.on_road for d in cloud}
    for row in fleet.manifest_rows():
        if row["kind"] == "manhole":
            assert on_road[str(row["device_id"])] is (row["on_road"] == "true")
