"""Vectorised per-device online detectors (one small module each, one shared base).

See :mod:`alerts.detection.detectors.base` for the contract every detector keeps.
"""

from tests.alerts.detection.reference.detectors.base import Detector, Threshold, grow
from tests.alerts.detection.reference.detectors.dose import EN50291_CURVE, FractionalDose
from tests.alerts.detection.reference.detectors.ewma import EWMAZScore
from tests.alerts.detection.reference.detectors.flatline import Flatline
from tests.alerts.detection.reference.detectors.rate import RateOfRise

__all__ = [
    "EN50291_CURVE",
    "Detector",
    "EWMAZScore",
    "Flatline",
    "FractionalDose",
    "RateOfRise",
    "Threshold",
    "grow",
]
