"""The fleet description (``vigil simulate CONFIG.toml``): TOML validated by pydantic, unknown keys refused.

Why: a typo in a scenario rate (``cooknig = 2``) must not silently run the default; :class:`ConfigError`
names the key path (``scenarios.smoke_alarm.cooknig``) and its line in the file. Example files:
``examples/fleet-small.toml``, ``examples/fleet-10k.toml``; every key is documented in
``docs/simulators.md``.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from firmware_bridge.kernel.records import DeviceKind
from simulators.errors import ConfigError
from simulators.registry import effect_names
from simulators.timeutil import parse_duration, parse_instant

Rate = Annotated[float, Field(ge=0)]
Prob = Annotated[float, Field(ge=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Area(_Strict):
    lat: Annotated[float, Field(ge=-90, le=90)] = 39.96
    lon: Annotated[float, Field(ge=-180, le=180)] = 116.30
    name: str = "Haidian demo neighbourhood"


class Devices(_Strict):
    manhole: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    smoke_alarm: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    wristband: Annotated[int, Field(ge=0, le=1_000_000)] = 0

    def counts(self) -> dict[DeviceKind, int]:
        return {
            DeviceKind.MANHOLE: self.manhole,
            DeviceKind.SMOKE_ALARM: self.smoke_alarm,
            DeviceKind.WRISTBAND: self.wristband,
        }


class Scenarios(_Strict):
    """Rates per device-day by effect name (rain: per street-day); unset = the model's default."""

    manhole: dict[str, Rate] = Field(default_factory=dict)
    smoke_alarm: dict[str, Rate] = Field(default_factory=dict)
    wristband: dict[str, Rate] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> Scenarios:
        for kind in DeviceKind:
            known = effect_names(kind)
            for key in getattr(self, kind.value):
                if key not in known:
                    raise ValueError(
                        f"scenarios.{kind.value}.{key}: unknown effect; known: {', '.join(known)}"
                    )
        return self

    def for_kind(self, kind: DeviceKind) -> dict[str, float]:
        return dict(getattr(self, kind.value))


class Faults(_Strict):
    corrupt: Prob = 0.0
    truncate: Prob = 0.0
    duplicate: Prob = 0.0
    reorder: Prob = 0.0
    skewed_gateways: Prob = 0.0
    skew_s: Annotated[float, Field(ge=0, le=86400)] = 0.0
    outages_per_gateway_day: Rate = 0.0
    outage_min_s: Annotated[float, Field(gt=0)] = 300.0
    outage_max_s: Annotated[float, Field(gt=0)] = 1800.0


class FilesOutput(_Strict):
    enabled: bool = True


class SerialOutput(_Strict):
    enabled: bool = False
    path: str | None = None  # write here; default: create a pseudo-terminal pair
    format: str = "slip"  # "slip" (our framing) or "nnmi" (NB-IoT module URCs)

    @field_validator("format")
    @classmethod
    def _fmt(cls, v: str) -> str:
        if v not in ("slip", "nnmi"):
            raise ValueError("format must be 'slip' or 'nnmi'")
        return v


class MqttOutput(_Strict):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: str | None = None
    password: str | None = None
    vigil: bool = True  # our payloads on vigil/v1/dev/{kind}/{device_id}/up
    chirpstack: bool = False  # ChirpStack v4 uplink JSON
    chirpstack_application_id: str = "vigil-sim"
    lorawan: bool = False  # raw PHYPayload on vigil/v1/lora/{gateway_id}/rx
    queue_size: Annotated[int, Field(ge=1)] = 10_000
    timeout_s: Annotated[float, Field(gt=0)] = 10.0


class HttpOutput(_Strict):
    enabled: bool = False
    url: str = ""
    token: str | None = None
    queue_size: Annotated[int, Field(ge=1)] = 10_000
    timeout_s: Annotated[float, Field(gt=0)] = 10.0


class Outputs(_Strict):
    files: FilesOutput = FilesOutput()
    serial: SerialOutput = SerialOutput()
    mqtt: MqttOutput = MqttOutput()
    http: HttpOutput = HttpOutput()


class FleetConfig(_Strict):
    version: int = 1
    seed: int = 1
    start: float = Field(default=1_780_272_000.0, description="UTC epoch s (ISO-8601 accepted)")
    duration_s: float = 7200.0
    speedup: Annotated[float, Field(ge=0)] = 0.0  # 0 = as fast as possible
    step_s: Annotated[float, Field(gt=0, le=900)] = 300.0
    area: Area = Area()
    devices: Devices = Devices()
    scenarios: Scenarios = Scenarios()
    faults: Faults = Faults()
    outputs: Outputs = Outputs()

    @model_validator(mode="before")
    @classmethod
    def _times(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if "duration" in data:
                data["duration_s"] = parse_duration(data.pop("duration"))
            if "start" in data:
                data["start"] = parse_instant(data["start"])
        return data

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != 1:
            raise ValueError(f"unsupported config version {v} (this Vigil reads version 1)")
        return v


def _line_of(text: str, path: tuple[Any, ...]) -> int | None:
    """Best-effort line of a key path in TOML text (tomllib keeps no positions)."""
    keys = [str(p) for p in path if isinstance(p, str)]
    if not keys:
        return None
    section = ".".join(keys[:-1])
    last = keys[-1]
    in_section = section == ""
    for no, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        m = re.match(r"^\[+([^\]]+)\]+", s)
        if m:
            in_section = m.group(1).strip() == section
            if in_section and section and m.group(1).strip().endswith(last):
                return no
            continue
        if in_section and re.match(rf"^{re.escape(last)}\s*=", s):
            return no
    return None


def load_config(path: Path | str, **overrides: Any) -> FleetConfig:
    """Read and validate a fleet TOML file; ``overrides`` (seed, duration_s, speedup, ...) win."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    return parse_config(data, source=str(p), text=text, **overrides)


def parse_config(
    data: dict[str, Any], *, source: str = "<config>", text: str = "", **overrides: Any
) -> FleetConfig:
    given = {k: v for k, v in overrides.items() if v is not None}
    data = {**data, **given}
    if "duration_s" in given:
        data.pop("duration", None)
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err["loc"]
            key = ".".join(str(x) for x in loc) or "(top level)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] == "value_error" and ": unknown effect" in msg:
                key, _, msg = msg.removeprefix("Value error, ").partition(": ")
                loc = tuple(key.split("."))
            line = _line_of(text, tuple(loc)) if text else None
            where = f"{source}:{line}" if line else source
            problems.append(f"{where}: {key}: {msg}")
        raise ConfigError("invalid fleet config:\n  " + "\n  ".join(problems)) from exc
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
