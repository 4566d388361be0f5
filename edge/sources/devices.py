"""The fleet's device list (``devices.csv``, as ``vigil simulate`` writes it): kinds, LoRaWAN session keys.

Columns used: ``device_id, kind, dev_addr, nwk_skey, app_skey, profile`` (others are ignored here; the
cloud imports the same file for names, addresses and contacts). Device ids are 16 lowercase hex chars.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge.errors import DeviceListError as DeviceListError
from firmware_bridge.devicelist import DeviceListError as DeviceFormatError
from firmware_bridge.devicelist import decode_device_csv
from firmware_bridge.kernel.records import DeviceKind


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
    """Read ``devices.csv`` (UTF-8, UTF-8 with BOM, or GBK/GB18030 as Excel on Chinese Windows saves it)."""
    out: dict[str, DeviceEntry] = {}
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DeviceListError(
            f"{path}: cannot read device list: {exc.strerror or exc} "
            "(copy the fleet's devices.csv there, or fix gateway.devices_file)"
        ) from exc
    try:
        rows = decode_device_csv(data)
    except DeviceFormatError as exc:
        raise DeviceListError(f"{path}: {exc}") from exc
    for line, row in enumerate(rows, start=2):
        try:
            dev_id = row["device_id"].lower()
            kind = DeviceKind(row["kind"])
            addr = row.get("dev_addr") or ""
            nwk = row.get("nwk_skey") or ""
            app = row.get("app_skey") or ""
            out[dev_id] = DeviceEntry(
                device_id=dev_id,
                kind=kind,
                profile=row.get("profile") or "",
                dev_addr=int(addr, 16) if addr else None,
                nwk_skey=bytes.fromhex(nwk) if nwk else None,
                app_skey=bytes.fromhex(app) if app else None,
            )
        except (ValueError, KeyError, AttributeError) as exc:
            raise DeviceListError(f"{path}:{line}: invalid row: {exc}") from exc
    return DeviceList(out)
