"""Human-facing words and times, Chinese first: one display zone, one set of labels, for every part.

Times are stored and carried as UTC epoch seconds; people read them in one display zone
(``Asia/Shanghai`` unless ``VIGIL_DISPLAY_TZ`` says otherwise); the API speaks ISO-8601 with an offset.
Text exists in zh-CN and English and follows the locale (``VIGIL_LANG``, else ``LC_ALL`` / ``LANG``;
anything that is not English reads Chinese, because operators, responders and residents read Chinese).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from firmware_bridge.kernel.events import EventType, Severity
from firmware_bridge.kernel.records import DeviceKind

Lang = Literal["zh", "en"]
DEFAULT_DISPLAY_TZ = "Asia/Shanghai"


def display_zone(name: str | None = None) -> ZoneInfo:
    """The zone people read times in: ``name``, else ``VIGIL_DISPLAY_TZ``, else Asia/Shanghai."""
    return ZoneInfo(name or os.environ.get("VIGIL_DISPLAY_TZ") or DEFAULT_DISPLAY_TZ)


def lang(value: str | None = None) -> Lang:
    """``en`` for an English locale (``en``, ``en_US.UTF-8``, ``C``), else ``zh``."""
    raw = value
    if raw is None:
        raw = os.environ.get("VIGIL_LANG") or os.environ.get("LC_ALL") or os.environ.get("LANG") or "zh"
    raw = raw.strip().lower()
    return "en" if raw.startswith("en") or raw in ("c", "c.utf-8", "posix") else "zh"


def iso(ts: float, zone: ZoneInfo | None = None) -> str:
    """ISO-8601 with an offset, in the display zone (the API's form): ``2026-11-26T19:09:00+08:00``."""
    return datetime.fromtimestamp(ts, tz=zone or display_zone()).isoformat(timespec="seconds")


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def show(ts: float, zone: ZoneInfo | None = None) -> str:
    """A time as people read it: ``2026-11-26 19:09:00`` in the display zone."""
    return datetime.fromtimestamp(ts, tz=zone or display_zone()).strftime("%Y-%m-%d %H:%M:%S")


def parse_iso(text: str) -> float:
    """UTC epoch seconds from ISO-8601; a time without an offset is read in the display zone."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=display_zone())
    return dt.timestamp()


EVENT_LABELS: dict[EventType, tuple[str, str]] = {
    EventType.COVER_DISPLACED: ("井盖位移", "cover displaced"),
    EventType.COVER_OPEN: ("井盖开启/丢失", "cover open or missing"),
    EventType.OVERFLOW: ("井下水位溢流", "sewer overflow"),
    EventType.GAS_COMBUSTIBLE: ("可燃气体超标", "combustible gas"),
    EventType.GAS_TOXIC: ("有毒气体超标", "toxic gas"),
    EventType.OXYGEN_ABNORMAL: ("氧气浓度异常", "oxygen abnormal"),
    EventType.FIRE: ("火警", "fire"),
    EventType.CO: ("一氧化碳超标", "carbon monoxide"),
    EventType.CONTAMINATION: ("传感器污染", "sensor contamination"),
    EventType.FALL: ("跌倒", "fall"),
    EventType.SOS: ("紧急呼救", "SOS"),
    EventType.HEART_RATE_HIGH: ("心率过高", "heart rate high"),
    EventType.HEART_RATE_LOW: ("心率过低", "heart rate low"),
    EventType.SPO2_LOW: ("血氧过低", "SpO2 low"),
    EventType.INACTIVITY: ("长时间未活动", "long inactivity"),
    EventType.GEOFENCE_EXIT: ("离开安全区域", "left the safe zone"),
    EventType.BAND_REMOVED: ("手环已摘下", "band removed"),
    EventType.TAMPER: ("设备被拆/破坏", "tamper"),
    EventType.SENSOR_FAULT: ("传感器故障", "sensor fault"),
    EventType.LOW_BATTERY: ("电量低", "low battery"),
    EventType.DEVICE_SILENT: ("设备失联", "device silent"),
    EventType.GATEWAY_OFFLINE: ("网关离线", "gateway offline"),
    EventType.NUISANCE_TRAFFIC: ("车辆碾压（误报）", "traffic (nuisance)"),
    EventType.NUISANCE_COOKING: ("烹饪油烟（误报）", "cooking (nuisance)"),
    EventType.NUISANCE_TEST: ("测试按键", "test button"),
    EventType.NUISANCE_HUSH: ("消音", "hush"),
}
SEVERITY_LABELS: dict[Severity, tuple[str, str]] = {
    Severity.NONE: ("无", "none"),
    Severity.LOW: ("低", "low"),
    Severity.MEDIUM: ("中", "medium"),
    Severity.HIGH: ("高", "high"),
}
KIND_LABELS: dict[DeviceKind, tuple[str, str]] = {
    DeviceKind.MANHOLE: ("智能井盖", "manhole cover"),
    DeviceKind.SMOKE_ALARM: ("烟雾报警器", "smoke alarm"),
    DeviceKind.WRISTBAND: ("智能手环", "wristband"),
}


def _pick(pair: tuple[str, str], language: Lang | None) -> str:
    return pair[1] if (language or lang()) == "en" else pair[0]


def event_label(event: EventType | str, language: Lang | None = None) -> str:
    return _pick(EVENT_LABELS[EventType(event)], language)


def severity_label(severity: Severity | int | str, language: Lang | None = None) -> str:
    sev = Severity.parse(severity) if not isinstance(severity, Severity) else severity
    return _pick(SEVERITY_LABELS[sev], language)


def kind_label(kind: DeviceKind | str, language: Lang | None = None) -> str:
    return _pick(KIND_LABELS[DeviceKind(kind)], language)
