"""The gateway's one configuration file: TOML, validated by pydantic, extra keys forbidden.

Why this shape: an installer edits one file on a Pi over SSH. A typo (``baudrat = 9600``) must not be
silently ignored, and the error must say *where*: :class:`ConfigError` names the key path
(``sources.serial[0].baudrate``) and the line of the file it sits on, found by scanning the TOML text
(``tomllib`` does not keep positions). Every field has a default that is safe on a Raspberry Pi.

Sections (full reference in ``docs/gateway.md``)::

    [gateway]            id, credential | credential_file, data_dir, devices_file, accept_unknown_devices
    [[sources.serial]]   name, port, baudrate, framing = "slip" | "nbiot"
    [[sources.mqtt]]     name, host, port, topics, format = "vigil" | "chirpstack" | "lorawan", username, ...
    [sources.udp]        name, bind, port            (Semtech UDP packet forwarder)
    [uplink]             mode = "http" | "mqtt" | "none", url, body = "msgpack" | "json", batch sizes,
                         timeout, backoff, backlog rate, heartbeat_s, linger_s, mqtt_alert_topic,
                         mqtt_alert_reprobe_min_s / _max_s,
                         ca_file, client_cert, client_key, allow_plaintext (TLS: docs/security.md)
    [outbox]             max_bytes, max_age_s, alert_max_age_s, synchronous
    [detection]          batch_window_ms, batch_max_frames, urgent_flush, urgent_gap_ms, queue_size,
                         tick_interval_s, snapshot_interval_s
    [[actions]]          local life-safety actions: type = "command" | "buzzer" | "sms"
    [metrics]            enabled, bind, port
    [clock]              file (accelerated simulated clock shared with ``vigil simulate``)
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.errors import ConfigError as ConfigError
from firmware_bridge.kernel.events import LIFE_SAFETY, EventType


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-/]+$")]


class GatewaySection(_Section):
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
    credential: str | None = Field(default=None, repr=False)
    credential_file: Path | None = None
    data_dir: Path = Path("/var/lib/vigil-gateway")
    devices_file: Path | None = None
    accept_unknown_devices: bool = True

    @model_validator(mode="after")
    def _one_credential(self) -> GatewaySection:
        if self.credential is not None and self.credential_file is not None:
            raise ValueError("set credential or credential_file, not both")
        return self


class SerialSource(_Section):
    name: Name | None = None
    port: str
    baudrate: Annotated[int, Field(gt=0, le=4_000_000)] = 115200
    framing: Literal["slip", "nbiot"] = "slip"


class MqttSource(_Section):
    name: Name | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    topics: Annotated[list[str], Field(min_length=1)]
    format: Literal["vigil", "chirpstack", "lorawan"] = "vigil"
    username: str | None = None
    password_file: Path | None = None
    client_id: str | None = None
    qos: Literal[0, 1, 2] = 1
    # Flow control (edge/sources/mqtt.py): messages held un-acknowledged until committed, by count and bytes
    max_pending: Annotated[int, Field(ge=1)] = 1000
    max_pending_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    max_message_bytes: Annotated[int, Field(ge=64)] = 64 * 1024


class UdpSource(_Section):
    name: Name | None = None
    bind: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, lt=65536)] = 1700


class SourcesSection(_Section):
    serial: list[SerialSource] = Field(default_factory=list)
    mqtt: list[MqttSource] = Field(default_factory=list)
    udp: UdpSource | None = None


class UplinkSection(_Section):
    mode: Literal["http", "mqtt", "none"] = "http"
    url: str = ""
    batch_max_records: Annotated[int, Field(gt=0, le=50_000)] = 5000
    batch_max_bytes: Annotated[int, Field(gt=1000)] = 1_000_000
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    backoff_initial_s: Annotated[float, Field(gt=0)] = 0.5
    backoff_max_s: Annotated[float, Field(gt=0)] = 60.0
    live_window_s: Annotated[float, Field(gt=0)] = 300.0
    backlog_records_per_s: Annotated[float, Field(gt=0)] = 5000.0
    #: a status-only batch when nothing was acknowledged for this long, so the cloud keeps a quiet gateway
    #: online: keep it well under the cloud's gateway_offline_s (300 s; docs/gateway.md "Heartbeat")
    heartbeat_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    #: under load, wait up to this long for a fuller telemetry batch; 0 = at once (docs/gateway.md "Linger")
    linger_s: Annotated[float, Field(ge=0, le=5)] = 0.5
    #: batch body: "msgpack" = the columnar binary body (docs/contract.md; about 10x less cloud CPU than
    #: JSON, half the bytes), "json" = JSON. A cloud that does not read the binary body gets JSON by itself.
    body: Literal["msgpack", "json"] = "msgpack"
    #: MQTT only: alert batches on their own topic ``vigil/v1/gw/{id}/alert`` (the cloud reads them in a
    #: session of their own, never behind telemetry; docs/contract.md "Alert lane"). A cloud or broker ACL
    #: without the lane is detected (no ack) and the gateway falls back to ``.../up`` by itself.
    mqtt_alert_topic: bool = True
    #: MQTT only: after the alert lane was judged missing, alert batches go on ``.../up`` for this long, then
    #: the lane is re-tried; each failed re-try doubles the period up to ``mqtt_alert_reprobe_max_s``, and
    #: any answer on the lane (or a reconnect to the broker) re-tries at once (docs/gateway.md)
    mqtt_alert_reprobe_min_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    mqtt_alert_reprobe_max_s: Annotated[float, Field(gt=0, le=86_400)] = 900.0
    #: CA bundle (PEM) that signed the cloud's or broker's certificate, for https:// and mqtts:// to a
    #: private CA; unset = the system's trust store
    ca_file: Path | None = None
    #: client certificate and key (PEM) for a cloud or broker that requires mutual TLS
    client_cert: Path | None = None
    client_key: Path | None = None
    #: a lab or an encrypted tunnel (VPN, WireGuard) only: silence the warning about http:// and mqtt://
    #: uplinks to a host that is not this machine (credential and data then travel unencrypted)
    allow_plaintext: bool = False

    @model_validator(mode="after")
    def _url(self) -> UplinkSection:
        if self.mode == "http" and not re.match(r"^https?://", self.url):
            raise ValueError('uplink.url must be an http:// or https:// URL when mode = "http"')
        if self.mode == "mqtt" and not re.match(r"^mqtts?://[^/:]+(:\d+)?/?$", self.url):
            raise ValueError('uplink.url must look like mqtt://host:port when mode = "mqtt"')
        if self.mqtt_alert_reprobe_min_s > self.mqtt_alert_reprobe_max_s:
            raise ValueError(
                f"uplink.mqtt_alert_reprobe_min_s ({self.mqtt_alert_reprobe_min_s:g}) must not exceed "
                f"uplink.mqtt_alert_reprobe_max_s ({self.mqtt_alert_reprobe_max_s:g})"
            )
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("set uplink.client_cert and uplink.client_key together")
        return self

    @property
    def plaintext(self) -> bool:
        """The uplink sends the credential and data unencrypted (``http://`` or ``mqtt://``)."""
        return self.mode != "none" and urlsplit(self.url).scheme in ("http", "mqtt")

    def plaintext_warning(self) -> tuple[str, str] | None:
        """``(zh, en)`` warning for a plaintext uplink to another machine, unless ``allow_plaintext``.

        Loopback hosts (``localhost``, 127.0.0.0/8, ``::1``) are a lab or a local proxy and never warn.
        """
        if not self.plaintext or self.allow_plaintext:
            return None
        host = urlsplit(self.url).hostname or ""
        if _is_loopback(host):
            return None
        scheme = urlsplit(self.url).scheme
        secure = {"http": "https://", "mqtt": "mqtts://"}[scheme]
        return (
            f"上行链路 {scheme}:// 至 {host} 未加密：网关凭据和全部数据以明文传输。请改用 {secure}"
            "（自签 CA 时设置 uplink.ca_file）；仅限实验室或加密隧道内可设置 uplink.allow_plaintext = true",
            f"uplink {scheme}:// to {host} is NOT encrypted: the gateway credential and all data travel in "
            f"clear text. Use {secure} (uplink.ca_file for a private CA); only in a lab or inside an "
            "encrypted tunnel set uplink.allow_plaintext = true",
        )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OutboxSection(_Section):
    max_bytes: Annotated[int, Field(ge=1 << 16)] = 512 * 1024 * 1024
    max_age_s: Annotated[float, Field(gt=0)] = 14 * 86400.0
    alert_max_age_s: Annotated[float, Field(gt=0)] = 90 * 86400.0
    synchronous: Literal["full", "normal"] = "full"
    dedupe_window_s: Annotated[float, Field(ge=0)] = 3600.0


class DetectionSection(_Section):
    batch_window_ms: Annotated[float, Field(gt=0, le=10_000)] = 50.0
    batch_max_frames: Annotated[int, Field(gt=0, le=100_000)] = 2000
    # a frame with a life-safety bit closes its batch at once (docs/gateway.md "Batching")
    urgent_flush: bool = True
    # ... but at most one such early close per urgent_gap_ms (an alarm storm still makes batches)
    urgent_gap_ms: Annotated[float, Field(ge=0, le=10_000)] = 20.0
    queue_size: Annotated[int, Field(gt=0)] = 100_000
    tick_interval_s: Annotated[float, Field(gt=0)] = 1.0
    snapshot_interval_s: Annotated[float, Field(gt=0)] = 60.0
    profiles_file: Path | None = None


class ActionSection(_Section):
    name: Name
    type: Literal["command", "buzzer", "sms"]
    when: Literal["cloud_down", "always"] = "cloud_down"
    events: list[EventType] = Field(default_factory=lambda: sorted(LIFE_SAFETY))
    min_interval_s: Annotated[float, Field(ge=0)] = 300.0
    ack_deadline_s: Annotated[float, Field(gt=0)] | None = (
        None  # cloud_down: wait this long for the ack (15 s)
    )
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    # command / buzzer-by-command
    argv: list[str] = Field(default_factory=list)
    # buzzer by sysfs-like file
    path: Path | None = None
    value: str = "1"
    # sms through an NB-IoT / GSM module
    port: str | None = None
    baudrate: Annotated[int, Field(gt=0)] = 9600
    numbers: list[Annotated[str, Field(pattern=r"^\+?[0-9]{3,20}$")]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _complete(self) -> ActionSection:
        if self.type == "command" and not self.argv:
            raise ValueError('a command action needs argv = ["program", "arg", ...]')
        if self.type == "buzzer" and self.path is None and not self.argv:
            raise ValueError("a buzzer action needs path (a sysfs-like file) or argv")
        if self.type == "sms" and (not self.port or not self.numbers):
            raise ValueError("an sms action needs port and numbers")
        return self


class MetricsSection(_Section):
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, lt=65536)] = 9108


class ClockSection(_Section):
    file: Path | None = None


class GatewayConfig(_Section):
    devices_file: Path | None = Field(default=None, description="top-level alias of gateway.devices_file")
    gateway: GatewaySection
    sources: SourcesSection = Field(default_factory=SourcesSection)
    uplink: UplinkSection = Field(default_factory=lambda: UplinkSection(mode="none"))
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    detection: DetectionSection = Field(default_factory=DetectionSection)
    actions: list[ActionSection] = Field(default_factory=list)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    clock: ClockSection = Field(default_factory=ClockSection)

    @model_validator(mode="after")
    def _devices_file_once(self) -> GatewayConfig:
        if self.devices_file is not None:
            if self.gateway.devices_file is not None:
                raise ValueError("set devices_file at the top or in [gateway], not both")
            gw = self.gateway.model_copy(update={"devices_file": self.devices_file})
            object.__setattr__(self, "gateway", gw)
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        names = [n for n, _ in self.source_names()]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique; repeated: {sorted(dup)}")
        return self

    def source_names(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for s in self.sources.serial:
            out.append((s.name or f"serial:{s.port}", s))
        for m in self.sources.mqtt:
            out.append((m.name or f"mqtt:{m.host}:{m.port}", m))
        if self.sources.udp is not None:
            u = self.sources.udp
            out.append((u.name or f"udp:{u.port}", u))
        return out

    def files_to_open(self) -> list[tuple[str, Path]]:
        """Every file the daemon reads at start, with its key: ``vigil gateway check-config`` opens each."""
        out: list[tuple[str, Path]] = []
        g = self.gateway
        if g.credential_file is not None and self.uplink.mode != "none":
            out.append(("gateway.credential_file", g.credential_file))
        if g.devices_file is not None:
            out.append(("gateway.devices_file", g.devices_file))
        if self.detection.profiles_file is not None:
            out.append(("detection.profiles_file", self.detection.profiles_file))
        if self.uplink.mode != "none":
            for key in ("ca_file", "client_cert", "client_key"):
                path = getattr(self.uplink, key)
                if path is not None:
                    out.append((f"uplink.{key}", path))
        if self.clock.file is not None:
            out.append(("clock.file", self.clock.file))
        for i, m in enumerate(self.sources.mqtt):
            if m.password_file is not None:
                out.append((f"sources.mqtt[{i}].password_file", m.password_file))
        return out

    def read_credential(self) -> str:
        """The uplink credential (never logged)."""
        if self.gateway.credential is not None:
            return self.gateway.credential
        if self.gateway.credential_file is not None:
            return self.gateway.credential_file.read_text(encoding="utf-8").strip()
        return ""

    @property
    def outbox_path(self) -> Path:
        return self.gateway.data_dir / "outbox.sqlite3"


# -- locating a key in the TOML text ----------------------------------------------------------------
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\")\s*=")


def _key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Map every table and ``table.key`` path (with array-of-table indices) to its 1-based line."""
    where: dict[tuple[str | int, ...], int] = {}
    counts: dict[tuple[str | int, ...], int] = {}
    table: tuple[str | int, ...] = ()
    for lineno, line in enumerate(text.splitlines(), start=1):
        m = _HEADER.match(line)
        if m:
            parts = [p.strip().strip('"') for p in m.group(2).split(".")]
            path: tuple[str | int, ...] = ()
            for i, p in enumerate(parts):
                path = (*path, p)
                if m.group(1) == "[[" and i == len(parts) - 1:
                    idx = counts.get(path, 0)
                    counts[path] = idx + 1
                    path = (*path, idx)
                elif path in counts:  # a sub-table of the latest array element
                    path = (*path, counts[path] - 1)
            table = path
            where.setdefault(table, lineno)
            continue
        k = _KEY.match(line)
        if k:
            where.setdefault((*table, k.group(1).strip('"')), lineno)
    return where


def _locate(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    for n in range(len(loc), 0, -1):
        hit = lines.get(tuple(loc[:n]))
        if hit is not None:
            return hit
    return None


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def parse_config(text: str, path: Path | str = "<string>") -> GatewayConfig:
    """Validate TOML text; relative paths in it are resolved against the file's directory."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError(path, [("(syntax)", int(m.group(1)) if m else None, str(exc))]) from exc
    try:
        cfg = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        lines = _key_lines(text)
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            problems.append((_dotted(loc), _locate(loc, lines), str(err["msg"])))
        raise ConfigError(path, problems) from exc
    base = Path(path).parent if str(path) != "<string>" else Path.cwd()
    return _resolve(cfg, base)


def _resolve(cfg: GatewayConfig, base: Path) -> GatewayConfig:
    base = Path(os.path.abspath(base))  # messages name /srv/x/var/dev/..., not examples/../var/dev/...

    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else Path(os.path.normpath(base / p))

    g = cfg.gateway
    upd: dict[str, Any] = {}
    gw_upd = {
        k: fix(getattr(g, k)) for k in ("credential_file", "devices_file", "data_dir") if fix(getattr(g, k))
    }
    if gw_upd:
        upd["gateway"] = g.model_copy(update=gw_upd)
    if cfg.clock.file is not None and not cfg.clock.file.is_absolute():
        upd["clock"] = cfg.clock.model_copy(update={"file": fix(cfg.clock.file)})
    pf = cfg.detection.profiles_file
    if pf is not None and not pf.is_absolute():
        upd["detection"] = cfg.detection.model_copy(update={"profiles_file": fix(pf)})

    def relative_port(port: str) -> bool:  # "../var/dev/sim/serial"; not /dev/..., not a pyserial URL
        return "/" in port and not port.startswith("/") and "://" not in port

    if any(relative_port(s.port) for s in cfg.sources.serial):
        serial = [
            s.model_copy(update={"port": str(fix(Path(s.port)))}) if relative_port(s.port) else s
            for s in cfg.sources.serial
        ]
        upd["sources"] = cfg.sources.model_copy(update={"serial": serial})
    up_upd = {
        k: fix(getattr(cfg.uplink, k))
        for k in ("ca_file", "client_cert", "client_key")
        if getattr(cfg.uplink, k) is not None and not getattr(cfg.uplink, k).is_absolute()
    }
    if up_upd:
        upd["uplink"] = cfg.uplink.model_copy(update=up_upd)
    if any(m.password_file is not None and not m.password_file.is_absolute() for m in cfg.sources.mqtt):
        mqtt = [m.model_copy(update={"password_file": fix(m.password_file)}) for m in cfg.sources.mqtt]
        upd["sources"] = upd.get("sources", cfg.sources).model_copy(update={"mqtt": mqtt})
    return cfg.model_copy(update=upd) if upd else cfg


def load_config(path: Path | str) -> GatewayConfig:
    """Read and validate a gateway TOML file; raises :class:`ConfigError` naming the key and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(p, [("(file)", None, f"cannot read: {exc.strerror or exc}")]) from exc
    return parse_config(text, p)
