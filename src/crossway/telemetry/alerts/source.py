"""What alert rules measure: golden signals from the aggregator, instance counts from the registry.

`SignalSource.samples(condition, window)` turns one metric into one sample per
key: per service, per route (method + template) or per caller→callee edge for
the golden signals, per service for `healthy_instances` and `instances`. A key
with no request in the window has no `rps` of interest and no success rate or
latency at all, so it yields no sample (the alert, if any, resolves), except
`rps`, which is a true 0.

The registry is reached through a plain callable returning
`{service: (healthy, total)}`, so this module needs nothing from the registry
package and tests feed it a dictionary. Pure: reads only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from crossway.telemetry.alerts.engine import Labels, Sample
from crossway.telemetry.alerts.expr import LATENCY_QUANTILES, Condition
from crossway.telemetry.signals.aggregator import Aggregator, Kind, Stat
from crossway.telemetry.signals.series import Totals

InstanceCounts = Callable[[], Mapping[str, tuple[int, int]]]
"""() → {service: (healthy instances, all instances)}."""


class SignalSource:
    def __init__(self, aggregator: Aggregator, instances: InstanceCounts | None = None) -> None:
        self.aggregator = aggregator
        self.instances = instances or dict

    def samples(self, condition: Condition, window: float) -> list[Sample]:
        if condition.dimension == "instances":
            return self._instance_samples(condition)
        kind: Kind = condition.dimension  # type: ignore[assignment]
        out = []
        for stat in self.aggregator.stats(kind, window, service=_exact_service(condition)):
            value = metric_value(condition.metric, stat.totals)
            if value is not None:
                out.append(Sample(_labels(stat), value))
        return out

    def _instance_samples(self, condition: Condition) -> list[Sample]:
        healthy_only = condition.metric == "healthy_instances"
        return [
            Sample((("service", service),), float(healthy if healthy_only else total))
            for service, (healthy, total) in sorted(self.instances().items())
        ]


def metric_value(metric: str, totals: Totals) -> float | None:
    """The value of a golden-signal metric over `totals`; None when undefined."""
    if metric == "rps":
        return totals.rps
    success = totals.success_rate
    if metric == "success_rate":
        return success
    if metric == "error_rate":
        return None if success is None else 1.0 - success
    return totals.quantile(LATENCY_QUANTILES[metric])


def _labels(stat: Stat) -> Labels:
    key = stat.key
    labels = [("service", key.service)]
    if key.kind == "route":
        labels += [("route", key.route), ("method", key.method)]
    elif key.kind == "edge":
        labels.append(("caller", key.caller))
    return tuple(labels)


def _exact_service(condition: Condition) -> str | None:
    """The service an `=` matcher pins, to read one service instead of all."""
    for m in condition.matchers:
        if m.label == "service" and m.op == "=":
            return m.value
    return None
