"""The Vigil edge gateway: sources -> batched decode -> vectorised detection -> crash-safe outbox -> cloud.

Daemon parts (``docs/gateway.md``): :mod:`edge.config`, :mod:`edge.sources`, :mod:`edge.pipeline`,
:mod:`edge.outbox`, :mod:`edge.uplink`, :mod:`edge.actions`, :mod:`edge.metrics`, :mod:`edge.status`,
:mod:`edge.daemon`. Detection (``docs/detection.md``): :mod:`alerts.detection.engine` and the per-kind rule
modules.
Imports stay lazy here so ``vigil --help`` is fast on a Pi.
"""
