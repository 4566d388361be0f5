"""Each package's curated public API (its ``__init__``), guarded like httpx's tests/test_exported_members.py.

A name in ``__all__`` must resolve, be listed once and in order, and ``dir(package)`` shows exactly it;
the lists below are the API: adding or removing a public name is a deliberate edit of this file too.
Importing a package is cheap (lazy PEP 562 exports): ``cloud`` loads no FastAPI / SQLAlchemy, ``edge`` no
numpy, so ``vigil --help`` and a gateway-only install stay light.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

API: dict[str, set[str]] = {
    "firmware_bridge.kernel": {
        "KIND_EVENTS", "LIFE_SAFETY", "AcceleratedClock", "AlertPhase", "Channel", "Clock", "DeviceKind",
        "EventType", "Flag", "KindSchema", "Reading", "ReadingBatch", "Severity", "SystemClock", "alert_id",
    },
    "firmware_bridge": {
        "ChecksumError", "DecodeError", "ReplayError", "TransportError", "VigilBridgeError", "Channel",
        "DeviceKind", "Flag", "KindSchema", "Reading", "ReadingBatch", "KINDS", "KindSpec",
        "decode_payload", "kind_of_payload", "spec",
    },
    "alerts": {
        "CONTRACT_VERSION", "AlertEvent", "GatewayStatus", "TelemetryBlock", "UplinkAck", "UplinkBatch",
    },
    "alerts.detection": {"DetectionEngine", "ProfileSet", "RULES"},
    "edge": {
        "ActionError", "ConfigError", "DeviceListError", "MetricsPortInUse", "OutboxError", "SourceError",
        "UplinkAuthError", "UplinkError", "UplinkInvalid", "UplinkProtocolError", "UplinkRejected",
        "UplinkTooLarge",
        "UplinkUnavailable", "VigilGatewayError", "GatewayConfig", "load_config", "parse_config", "Gateway",
        "run_gateway", "Outbox", "iter_alert_events", "iter_telemetry", "DeviceList", "load_devices",
        "gateway_status",
    },
    "cloud": {
        "create_app", "CloudSettings", "AuthenticationError", "BadRequestError", "CloudError", "ConfigError",
        "ConflictError", "ImportRowsError", "NotFoundError", "PayloadTooLargeError", "PermissionDeniedError",
        "StorageError", "AlertSink", "IngestService", "NullAlertSink", "Registry", "Credentials", "Database",
        "upgrade_head",
    },
    "simulators": {
        "ConfigError", "OutputError", "SimulatorError", "TruthFormatError", "LinkFaultRates", "SimFrame",
        "MANIFEST_COLUMNS", "RESPONDER_COLUMNS", "Fleet", "ScoreReport", "ScoreRow", "score", "TruthRecord",
        "load_truth", "write_truth",
    },
}  # fmt: skip
#: packages with an ``__init__`` API owned elsewhere: checked for consistency, not pinned here
ALSO = ("dashboards", "alerts.forecast")


@pytest.mark.parametrize("package", [*API, *ALSO])
def test_all_is_unique_and_resolves(package: str) -> None:
    mod = importlib.import_module(package)
    names = list(mod.__all__)
    assert len(names) == len(set(names)), package
    for name in names:
        assert getattr(mod, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError):
        getattr(mod, "no_such_name")  # noqa: B009


@pytest.mark.parametrize("package", list(API))
def test_the_public_api_is_exactly_this(package: str) -> None:
    mod = importlib.import_module(package)
    assert set(mod.__all__) == API[package]
    assert set(dir(mod)) >= API[package]


@pytest.mark.parametrize("package", list(API))
def test_exported_errors_share_the_package_base(package: str) -> None:
    mod = importlib.import_module(package)
    bases = {
        "firmware_bridge": "VigilBridgeError",
        "edge": "VigilGatewayError",
        "cloud": "CloudError",
        "simulators": "SimulatorError",
    }
    base_name = bases.get(package)
    if base_name is None:
        return
    base = getattr(mod, base_name)
    for name in mod.__all__:
        obj = getattr(mod, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, base), f"{package}.{name} is not a {base_name}"


def test_importing_the_packages_is_light() -> None:
    code = (
        "import sys, firmware_bridge, firmware_bridge.kernel, alerts, edge, cloud, simulators, vigil_cli\n"
        "heavy = [m for m in ('fastapi', 'sqlalchemy', 'uvicorn', 'alembic', 'httpx', 'aiomqtt') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "", done.stdout
