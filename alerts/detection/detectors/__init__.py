"""Vectorised per-device online detectors (one small module each, one shared base).

See :mod:`alerts.detection.detectors.base` for the contract every detector keeps.
"""

from alerts.detection.detectors.base import Detector, Threshold, grow
from alerts.detection.detectors.dose import EN50291_CURVE, FractionalDose
from alerts.detection.detectors.ewma import EWMAZScore
from alerts.detection.detectors.flatline import Flatline
from alerts.detection.detectors.rate import RateOfRise

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
