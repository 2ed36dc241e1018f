"""Golden signals: request rate, success rate and latency per service, route and edge.

Processes that see requests count them in a `Recorder` and push a summary
every 10 s (`StatsPusher`); the control plane files the pushes in an
`Aggregator` (10 s resolution for an hour, 1 min for a day, bounded memory),
which answers `GET /v1/stats`, `GET /v1/edges` and the alert rules.
"""

from crossway.telemetry.signals.aggregator import Aggregator, Key, Limits, Stat
from crossway.telemetry.signals.histogram import BOUNDS, BUCKET_COUNT, Histogram
from crossway.telemetry.signals.push import Push, PushSeries, Source, validate
from crossway.telemetry.signals.recorder import Recorder, StatsPusher
from crossway.telemetry.signals.series import Series, Totals

__all__ = [
    "BOUNDS",
    "BUCKET_COUNT",
    "Aggregator",
    "Histogram",
    "Key",
    "Limits",
    "Push",
    "PushSeries",
    "Recorder",
    "Series",
    "Source",
    "Stat",
    "StatsPusher",
    "Totals",
    "validate",
]
