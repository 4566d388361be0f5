"""simulators: seeded device fleets with ground truth, and the scorer that measures detection against it.

Public API (see ``docs/simulators.md``)::

    from simulators import Fleet, SimFrame, TruthRecord, load_truth, score

    fleet = Fleet.build({DeviceKind.WRISTBAND: 100}, seed=1)
    for frame in fleet.run(start, duration_s):   # SimFrame(time, device_id, kind, payload, ...)
        ...
    fleet.truth            # list[TruthRecord], exact ground truth of the run
    fleet.manifest_rows()  # devices.csv rows
    report = score(fleet.truth, alerts, devices=100, duration_s=duration_s)
    print(report.format_table())
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy (PEP 562): ``vigil --help`` imports simulators.cli and must not pay for numpy and pydantic.
_EXPORTS = {
    "ConfigError": "simulators.errors",
    "OutputError": "simulators.errors",
    "SimulatorError": "simulators.errors",
    "TruthFormatError": "simulators.errors",
    "LinkFaultRates": "simulators.faults",
    "SimFrame": "simulators.faults",
    "MANIFEST_COLUMNS": "simulators.fleet",
    "RESPONDER_COLUMNS": "simulators.fleet",
    "Fleet": "simulators.fleet",
    "ScoreReport": "simulators.scorer",
    "ScoreRow": "simulators.scorer",
    "score": "simulators.scorer",
    "TruthRecord": "simulators.truth",
    "load_truth": "simulators.truth",
    "write_truth": "simulators.truth",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'simulators' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
