"""The installers' device list (``devices.csv``): its columns and how its bytes become rows.

Written by ``vigil simulate``, read by the cloud's bulk import and by the gateway (kinds, LoRaWAN session
keys). ``nwk_skey``/``app_skey`` and the wearer's fields are secrets / personal data: the cloud stores
them encrypted. Street offices edit the file in Excel on Chinese Windows, which saves it as GBK / GB18030
(sometimes UTF-8 with a BOM): :func:`decode_device_csv` accepts all of these.
"""

from __future__ import annotations

import csv
import io

DEVICE_CSV_COLUMNS: tuple[str, ...] = (
    "device_id",
    "kind",
    "name",
    "lat",
    "lon",
    "address",
    "grid",
    "community",
    "street",
    "on_road",
    "gateway_id",
    "profile",
    "dev_addr",
    "nwk_skey",
    "app_skey",
    "wearer_name",
    "wearer_phone",
    "emergency_contact_phone",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("device_id", "kind")


class DeviceListError(ValueError):
    """The device list cannot be read: the message says which line or column and how to fix it."""


def decode_text(data: bytes) -> tuple[str, str]:
    """The text of a device list and the encoding it was in: UTF-8 (with or without BOM), else GB18030.

    GB18030 is a superset of GBK and GB2312, so it reads what Excel on Chinese Windows writes.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8"), "utf-8-sig"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030"), "gb18030"
    except UnicodeDecodeError as exc:
        raise DeviceListError(
            f"device list is neither UTF-8 nor GB18030/GBK (bad byte at offset {exc.start}); "
            "save it from Excel as 'CSV UTF-8' or 'CSV (comma delimited)'"
        ) from exc


def decode_device_csv(data: bytes) -> list[dict[str, str]]:
    """Rows of a device list, keyed by column name, whitespace stripped; unknown columns are kept."""
    text, _ = decode_text(data)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DeviceListError(f"device list has no column {', '.join(missing)} (header: {','.join(header)})")
    reader.fieldnames = header
    return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
