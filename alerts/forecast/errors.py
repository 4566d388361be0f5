"""The forecasting package's exceptions: one base class, raised for inputs a forecast cannot use."""

from __future__ import annotations


class ForecastError(Exception):
    """Base class of every error :mod:`alerts.forecast` raises on purpose."""


class NotEnoughHistoryError(ForecastError):
    """Too few events (or too short a period) to fit or evaluate a model."""


class GridError(ForecastError):
    """A grid that cannot be built: no points, a non-positive cell size, an unknown cell id."""
