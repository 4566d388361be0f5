"""The closed loop's cloud shell: persistence, the alert sink, timers, the API (``docs/loop.md``).

The policy lives in :mod:`alerts.loop` (pure); this package stores it, schedules it and serves it.
Entry points: :class:`~cloud.loop.service.LoopService` (blocking methods, run in a worker thread) and
:mod:`cloud.loop.wiring` (``LoopSink`` + ``install(app, sink)``, called by ``cloud.app.create_app``).
"""
