"""Vectorised per-device online detectors (one small module each, one shared base).

See :mod:`edge.detectors.base` for the contract every detector keeps.
"""

from edge.detectors.base import Detector, Threshold, grow
from edge.detectors.dose import EN50291_CURVE, FractionalDose
from edge.detectors.ewma import EWMAZScore
from edge.detectors.flatline import Flatline
from edge.detectors.rate import RateOfRise

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
