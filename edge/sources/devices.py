"""The fleet's device list (``devices.csv``, as ``vigil simulate`` writes it): kinds, LoRaWAN session keys.

Columns used: ``device_id, kind, dev_addr, nwk_skey, app_skey, profile`` (others are ignored here; the
cloud imports the same file for names, addresses and contacts). Device ids are 16 lowercase hex chars.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from firmware_bridge.kernel.records import DeviceKind


class DeviceListError(ValueError):
    """devices.csv is missing a column or holds an invalid row (the message names the line)."""


@dataclass(frozen=True, slots=True)
class DeviceEntry:
    device_id: str
    kind: DeviceKind
    profile: str = ""
    dev_addr: int | None = None
    nwk_skey: bytes | None = None
    app_skey: bytes | None = None


@dataclass(frozen=True)
class DeviceList:
    devices: dict[str, DeviceEntry]

    def __contains__(self, device_id: object) -> bool:
        return device_id in self.devices

    def __len__(self) -> int:
        return len(self.devices)

    def by_dev_addr(self) -> dict[int, DeviceEntry]:
        return {
            d.dev_addr: d
            for d in self.devices.values()
            if d.dev_addr is not None and d.nwk_skey and d.app_skey
        }


def load_devices(path: Path) -> DeviceList:
    out: dict[str, DeviceEntry] = {}
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise DeviceListError(f"{path}: cannot read device list: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.DictReader(fh)
        missing = {"device_id", "kind"} - set(reader.fieldnames or ())
        if missing:
            raise DeviceListError(f"{path}: missing column(s) {sorted(missing)}")
        for row in reader:
            line = reader.line_num
            try:
                dev_id = row["device_id"].strip().lower()
                kind = DeviceKind(row["kind"].strip())
                addr = (row.get("dev_addr") or "").strip()
                nwk = (row.get("nwk_skey") or "").strip()
                app = (row.get("app_skey") or "").strip()
                out[dev_id] = DeviceEntry(
                    device_id=dev_id,
                    kind=kind,
                    profile=(row.get("profile") or "").strip(),
                    dev_addr=int(addr, 16) if addr else None,
                    nwk_skey=bytes.fromhex(nwk) if nwk else None,
                    app_skey=bytes.fromhex(app) if app else None,
                )
            except (ValueError, KeyError, AttributeError) as exc:
                raise DeviceListError(f"{path}:{line}: invalid row: {exc}") from exc
    return DeviceList(out)
