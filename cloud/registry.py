"""The device registry: who each device is, where it is, who wears it, which gateway may speak for it.

Devices are keyed by their stable hardware id (LoRaWAN DevEUI = 16 hex digits, NB-IoT IMEI = 15 digits,
or a numeric serial), never by a display name, so renaming or moving a device keeps its history. Each
device has a *profile*: its expected reporting interval (default: the kind's heartbeat from
``firmware_bridge.registry``) and optional per-device detector thresholds.

Personal data (wearer name and phone, emergency contact phone) and LoRa session keys are encrypted at rest
(:mod:`cloud.crypto`) and shown in clear only to roles in ``PERSONAL_DATA_ROLES``; other roles get masked
values (``张*``, ``138****1234``); LoRa keys are never returned by the API.

A device worn by a person (``PERSONAL_KINDS``: the wristband) also has its home address and exact
position sealed: the clear ``address`` column stays empty and ``lat`` / ``lon`` hold the position snapped
to a ~100 m grid (enough for the map, the risk grid and picking the nearest responder); admin and
dispatcher get the exact values from the sealed document, other roles the coarse position and a masked
address. Manhole covers and smoke alarms sit at fixed installation points and are not personal
(docs/privacy.md).

Bulk import reads the CSV that ``vigil simulate`` writes, validates every row first, reports every bad
row with its line number, and writes all rows or none (an *upsert*: importing again updates devices).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select

from cloud.auth import PERSONAL_DATA_ROLES, Role
from cloud.crypto import SecretBox, coarse_position, mask_address, mask_name, mask_phone
from cloud.db import Database, Device
from cloud.errors import BadRequestError, ImportRowsError, NotFoundError
from firmware_bridge.devicelist import DEVICE_CSV_COLUMNS, DeviceListError, decode_text
from firmware_bridge.kernel.records import DeviceKind
from firmware_bridge.operator_push import vigil_device_id
from firmware_bridge.registry import spec

DEVICE_ID_RE = re.compile(r"^(?:[0-9A-Fa-f]{16}|[0-9]{6,20})$")
CSV_COLUMNS = DEVICE_CSV_COLUMNS
PRIVATE_FIELDS = ("wearer_name", "wearer_phone", "emergency_contact_phone", "nwk_skey", "app_skey")
#: kinds worn by a person: their address and exact position are sealed too (the rest are fixed installations)
PERSONAL_KINDS = frozenset({DeviceKind.WRISTBAND})
#: sealed only for ``PERSONAL_KINDS``
PLACE_FIELDS = ("address", "lat", "lon")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


def canonical_device_id(device_id: str) -> str:
    """The one spelling under which a device is stored and looked up.

    A DevEUI is lower-cased (gateways send the wire rendering, 16 lowercase hex digits, so an upper-case
    DevEUI in an import used to make every batch of that gateway fail as ``unknown_device``); an IMEI
    becomes Vigil's canonical id (16 hex digits, as on the serial link and from CTWing / OneNET), so a
    device has one id whichever way its frames arrive (docs/formats.md). Other ids are only stripped.
    """
    s = device_id.strip()
    imei = vigil_device_id(s)
    if imei is not None:
        return imei
    if len(s) == 16 and s.isascii():
        return s.lower()
    return s


class DeviceIn(BaseModel):
    """A device as provisioned (API body, one CSV row)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    device_id: str = Field(description="DevEUI (16 hex), IMEI (15 digits) or numeric serial")
    kind: DeviceKind
    name: str = Field(default="", max_length=128)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    address: str = Field(default="", max_length=256)
    grid: str = Field(default="", max_length=64)
    community: str = Field(default="", max_length=64)
    street: str = Field(default="", max_length=64)
    on_road: bool = False
    gateway_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
    profile: str = Field(default="default", max_length=64)
    interval_s: float | None = Field(
        default=None,
        gt=0,
        le=30 * 86400,
        description="expected reporting interval; default: the kind's heartbeat",
    )
    thresholds: dict[str, float] = Field(default_factory=dict)
    dev_addr: str = Field(default="", pattern=r"^([0-9A-Fa-f]{8})?$")
    nwk_skey: str = Field(default="", pattern=r"^([0-9A-Fa-f]{32})?$")
    app_skey: str = Field(default="", pattern=r"^([0-9A-Fa-f]{32})?$")
    wearer_name: str = Field(default="", max_length=64)
    wearer_phone: str = Field(default="", max_length=32, pattern=r"^[0-9+\- ]*$")
    emergency_contact_phone: str = Field(default="", max_length=32, pattern=r"^[0-9+\- ]*$")

    @field_validator("device_id")
    @classmethod
    def _hardware_id(cls, v: str) -> str:
        if not DEVICE_ID_RE.match(v):
            raise ValueError(
                "must be a DevEUI (16 hex digits), an IMEI (15 digits) or a numeric serial (6-20 digits)"
            )
        return canonical_device_id(v)

    @field_validator("lat", "lon", mode="before")
    @classmethod
    def _blank_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("gateway_id", mode="before")
    @classmethod
    def _blank_gateway(cls, v: Any) -> Any:
        return None if v == "" else v

    @field_validator("profile", mode="before")
    @classmethod
    def _blank_profile(cls, v: Any) -> Any:
        return v or "default"

    @field_validator("on_road", mode="before")
    @classmethod
    def _bool(cls, v: Any) -> Any:
        if isinstance(v, str):
            low = v.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"on_road must be true/false/1/0, got {v!r}")
        return v

    @field_validator("thresholds")
    @classmethod
    def _finite(cls, v: dict[str, float]) -> dict[str, float]:
        for k, x in v.items():
            if not math.isfinite(x):
                raise ValueError(f"threshold {k!r} must be finite")
        return v


class DeviceOut(BaseModel):
    """A device as the API shows it; personal fields masked for roles that need less."""

    device_id: str
    kind: DeviceKind
    name: str
    lat: float | None
    lon: float | None
    address: str
    grid: str
    community: str
    street: str
    on_road: bool
    gateway_id: str | None
    profile: str
    interval_s: float
    thresholds: dict[str, float]
    dev_addr: str
    wearer_name: str = ""
    wearer_phone: str = ""
    emergency_contact_phone: str = ""
    personal_data_masked: bool
    position_coarse: bool = Field(
        default=False,
        description="lat/lon snapped to a ~100 m grid (a worn device, for a role that does not dispatch)",
    )
    last_seen: float | None = Field(description="device time of the newest reading (UTC s)")
    last_received_at: float | None = Field(description="when the cloud received the newest batch (UTC s)")
    last_seq: int | None
    last_battery_pct: float | None
    seq_gaps_total: int
    readings_total: int


class Registry:
    """Device CRUD and import. Blocking; the API calls it from worker threads."""

    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box

    def _apply(self, row: Device, d: DeviceIn) -> None:
        row.kind = d.kind.value
        row.name, row.lat, row.lon, row.address = d.name, d.lat, d.lon, d.address
        private: dict[str, Any] = {f: getattr(d, f) for f in PRIVATE_FIELDS}
        if d.kind in PERSONAL_KINDS:  # the wearer's home: sealed, only a coarse position in clear
            private.update({f: getattr(d, f) for f in PLACE_FIELDS})
            row.address, row.lat, row.lon = "", coarse_position(d.lat), coarse_position(d.lon)
        row.grid, row.community, row.street, row.on_road = d.grid, d.community, d.street, d.on_road
        row.gateway_id, row.profile, row.thresholds = d.gateway_id, d.profile, dict(d.thresholds)
        row.interval_s = d.interval_s or spec(d.kind).heartbeat_s
        row.dev_addr = d.dev_addr.upper()
        row.private_enc = self.box.seal(private)

    def upsert(self, devices: Iterable[DeviceIn], *, now: float) -> int:
        items = list(devices)
        with self.db.write() as s:
            existing = (
                {
                    r.device_id: r
                    for r in s.scalars(
                        select(Device).where(Device.device_id.in_([d.device_id for d in items]))
                    )
                }
                if items
                else {}
            )
            for d in items:
                row = existing.get(d.device_id)
                if row is None:
                    row = Device(device_id=d.device_id, created_at=now, seq_gaps_total=0, readings_total=0)
                    s.add(row)
                    existing[d.device_id] = row
                self._apply(row, d)
        return len(items)

    def import_csv(self, text: str | bytes, *, now: float, gateway_id: str | None = None) -> int:
        """Validate every row, then upsert all of them in one transaction; raises :class:`ImportRowsError`.

        Bytes are decoded as UTF-8 (with or without BOM) or GBK/GB18030, as Excel on Chinese Windows saves.
        ``gateway_id`` assigns every device to that gateway (a development gateway reading a whole fleet).
        """
        devices = parse_csv(csv_text(text) if isinstance(text, bytes) else text)
        if gateway_id is not None:
            devices = [d.model_copy(update={"gateway_id": gateway_id}) for d in devices]
        return self.upsert(devices, now=now)

    def delete(self, device_id: str) -> None:
        """Decommission a device: its registry row (and encrypted personal data) goes, its history stays.

        Its gateway can no longer write for it (403), and it is no longer judged silent.
        """
        device_id = canonical_device_id(device_id)  # an IMEI or upper-case DevEUI finds its device too
        with self.db.write() as s:
            row = s.get(Device, device_id)
            if row is None:
                raise NotFoundError(f"no device {device_id!r}")
            s.delete(row)

    def get(self, device_id: str, role: Role) -> DeviceOut:
        device_id = canonical_device_id(device_id)  # an IMEI or upper-case DevEUI finds its device too
        with self.db.read() as s:
            row = s.get(Device, device_id)
            if row is None:
                raise NotFoundError(f"no device {device_id!r}")
            return self.view(row, role)

    def list_devices(
        self,
        role: Role,
        *,
        kind: str | None = None,
        gateway_id: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[DeviceOut]:
        q = select(Device).order_by(Device.device_id).limit(limit).offset(offset)
        if kind:
            q = q.where(Device.kind == kind)
        if gateway_id:
            q = q.where(Device.gateway_id == gateway_id)
        with self.db.read() as s:
            return [self.view(r, role) for r in s.scalars(q)]

    def view(self, row: Device, role: Role) -> DeviceOut:
        private = self.box.open(row.private_enc)
        clear = role in PERSONAL_DATA_ROLES
        name = str(private.get("wearer_name", ""))
        phone = str(private.get("wearer_phone", ""))
        contact = str(private.get("emergency_contact_phone", ""))
        lat, lon, address = row.lat, row.lon, row.address
        worn = DeviceKind(row.kind) in PERSONAL_KINDS
        if worn:
            home = str(private.get("address") or row.address)  # (a row not yet migrated: the column)
            address = home if clear else mask_address(home)
            if clear:
                lat = float(private["lat"]) if "lat" in private else lat
                lon = float(private["lon"]) if "lon" in private else lon
            else:
                lat, lon = coarse_position(lat), coarse_position(lon)
        return DeviceOut(
            device_id=row.device_id,
            kind=DeviceKind(row.kind),
            name=row.name,
            lat=lat,
            lon=lon,
            address=address,
            grid=row.grid,
            community=row.community,
            street=row.street,
            on_road=row.on_road,
            gateway_id=row.gateway_id,
            profile=row.profile,
            interval_s=row.interval_s,
            thresholds=dict(row.thresholds or {}),
            dev_addr=row.dev_addr,
            wearer_name=name if clear else mask_name(name),
            wearer_phone=phone if clear else mask_phone(phone),
            emergency_contact_phone=contact if clear else mask_phone(contact),
            personal_data_masked=not clear,
            position_coarse=worn and not clear and lat is not None,
            last_seen=row.last_seen,
            last_received_at=row.last_received_at,
            last_seq=row.last_seq,
            last_battery_pct=row.last_battery_pct,
            seq_gaps_total=row.seq_gaps_total,
            readings_total=row.readings_total,
        )

    def session_keys(self, device_id: str) -> dict[str, str]:
        """LoRa ``dev_addr``/``nwk_skey``/``app_skey`` for internal use (never exposed by the API)."""
        device_id = canonical_device_id(device_id)  # an IMEI or upper-case DevEUI finds its device too
        with self.db.read() as s:
            row = s.get(Device, device_id)
            if row is None:
                raise NotFoundError(f"no device {device_id!r}")
            private = self.box.open(row.private_enc)
            return {
                "dev_addr": row.dev_addr,
                "nwk_skey": str(private.get("nwk_skey", "")),
                "app_skey": str(private.get("app_skey", "")),
            }


def csv_text(data: bytes) -> str:
    """The text of a device CSV file (UTF-8, UTF-8 with BOM, GBK / GB18030); :class:`BadRequestError` else."""
    try:
        return decode_text(data)[0]
    except DeviceListError as exc:
        raise BadRequestError(str(exc)) from exc


def parse_csv(text: str) -> list[DeviceIn]:
    """Parse and validate the whole CSV; every bad row is reported with its line number."""
    if text.startswith("\ufeff"):  # Excel's UTF-8 BOM
        text = text[1:]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise ImportRowsError(f"bad CSV header: {exc}", [(1, f"unreadable CSV: {exc}")]) from exc
    missing = [c for c in ("device_id", "kind") if c not in header]
    unknown = [c for c in header if c not in CSV_COLUMNS and c not in ("interval_s",)]
    if missing or unknown:
        msg = "; ".join(
            part
            for part in (
                f"missing column(s) {missing}" if missing else "",
                f"unknown column(s) {unknown}" if unknown else "",
            )
            if part
        )
        raise ImportRowsError(f"bad CSV header: {msg}", [(1, msg)])
    devices: list[DeviceIn] = []
    errors: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a field over the csv module's 128 KiB limit (was a 500)
            line = reader.line_num + 1  # the line being read when the csv module gave up
            msg = f"unreadable CSV: {exc}"
            raise ImportRowsError(f"bad CSV at line {line}: {msg}; nothing imported", [(line, msg)]) from exc
        line = reader.line_num
        if None in row:
            errors.append((line, "more fields than the header has columns"))
            continue
        values = {k: v for k, v in row.items() if v is not None and v != ""}
        try:
            dev = DeviceIn.model_validate(values)
        except ValidationError as exc:
            errs = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in exc.errors()
            )
            errors.append((line, errs))
            continue
        if dev.device_id in seen:
            errors.append((line, f"device_id {dev.device_id} repeats line {seen[dev.device_id]}"))
            continue
        seen[dev.device_id] = line
        devices.append(dev)
    if errors:
        raise ImportRowsError(f"{len(errors)} bad row(s); nothing was imported", errors)
    return devices
