"""Risk forecasting from the alarm history: hot spots, per-device scores, health trends, patrol plans.

Pure functions over arrays, no I/O (``docs/risk.md``):

- :mod:`~alerts.forecast.grid`: square, hexagonal or community grid cells;
- :mod:`~alerts.forecast.history`: the event history as columns, grouped into families;
- :mod:`~alerts.forecast.kde`: the kernel-density heat map (the baseline);
- :mod:`~alerts.forecast.sepp`: the self-exciting point process, fitted by EM, with
  :mod:`~alerts.forecast.background` covariates;
- :mod:`~alerts.forecast.evaluate` and :mod:`~alerts.forecast.backtest`: PAI, PEI, log-likelihood;
- :mod:`~alerts.forecast.risk`: scores per cell and device with their reasons, resident trends;
- :mod:`~alerts.forecast.patrol`: the stops and walking order of a shift.

Exports are lazy (PEP 562): importing the package loads neither numpy nor scipy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ForecastError": "alerts.forecast.errors",
    "GridError": "alerts.forecast.errors",
    "NotEnoughHistoryError": "alerts.forecast.errors",
    "Cells": "alerts.forecast.grid",
    "Projection": "alerts.forecast.grid",
    "community_cells": "alerts.forecast.grid",
    "hex_cells": "alerts.forecast.grid",
    "square_cells": "alerts.forecast.grid",
    "EventHistory": "alerts.forecast.history",
    "Family": "alerts.forecast.history",
    "Covariates": "alerts.forecast.background",
    "KDEConfig": "alerts.forecast.kde",
    "SEPPConfig": "alerts.forecast.sepp",
    "SEPPModel": "alerts.forecast.sepp",
    "fit_sepp": "alerts.forecast.sepp",
    "backtest": "alerts.forecast.backtest",
    "score_method": "alerts.forecast.evaluate",
    "Devices": "alerts.forecast.risk",
    "RiskForecast": "alerts.forecast.risk",
    "forecast_risk": "alerts.forecast.risk",
    "resident_trends": "alerts.forecast.risk",
    "PatrolPlan": "alerts.forecast.patrol",
    "plan_patrol": "alerts.forecast.patrol",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alerts.forecast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
