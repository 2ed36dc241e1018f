"""The push format: pre-aggregated golden signals sent to the control plane.

Every process that sees requests (the SDK inside a service, the gateway, a
sidecar) keeps a `Recorder` and, every `interval_s` seconds (10 by default),
sends what it counted since the last push:

    POST /v1/stats/push
    {
      "source": {"service": "checkout", "instance": "checkout-7f9c"},
      "interval_s": 10,
      "side": "server",
      "series": [
        {"service": "orders", "route": "/orders/{id}", "method": "GET",
         "caller": "checkout", "status_class": "2xx",
         "count": 120, "errors": 0, "sum": 3.42,
         "buckets": [0, 4, 30, …]}
      ]
    }

- `source` names who pushes (for per-source cardinality limits).
- `side` says where the requests were measured: `"server"` (the callee's own
  view: SDK middleware, sidecar inbound) or `"client"` (the caller's view:
  gateway, SDK client, sidecar outbound). Default `"server"`.
- Each series is one (service, route, method, caller, status_class) cell:
  `service` is the service *called*; `caller` is the calling service when
  known; `route` is the route template.
- `buckets` has one count per bucket of the shared bounds
  (`crossway.telemetry.metrics.LATENCY_BUCKETS`, seconds) plus a last +Inf
  bucket: `BUCKET_COUNT` integers. Per-bucket counts by default; with
  `"cumulative": true` they are Prometheus-style cumulative counts (never
  decreasing, the last equal to `count`). Optional `"bounds"`, when sent, must
  equal the shared bounds (catches a client built against other bounds).
- `count` is the number of requests (= the buckets' total), `errors` how many
  of them failed (≤ count), `sum` their total latency in seconds.

`validate` checks everything a schema cannot and raises `InvalidArgument`
whose `field` is the JSON path of the first problem (`$.series[3].buckets`).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from crossway.core.errors import InvalidArgument
from crossway.telemetry.metrics import LATENCY_BUCKETS, STATUS_CLASSES
from crossway.telemetry.signals.histogram import BUCKET_COUNT

MAX_SERIES_PER_PUSH = 2000
MAX_NAME = 128
MAX_ROUTE = 256
MAX_COUNT = 10**9
"""Requests one series may report in one push (a sanity bound, not a limit on traffic)."""
MIN_INTERVAL, MAX_INTERVAL = 1.0, 60.0

Side = Literal["server", "client"]


class Source(msgspec.Struct, forbid_unknown_fields=True):
    service: str
    instance: str = ""


class PushSeries(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    service: str
    route: str
    method: str
    status_class: str
    count: int
    buckets: list[int]
    errors: int = 0
    sum: float = 0.0
    caller: str | None = None
    cumulative: bool = False
    bounds: list[float] | None = None

    def per_bucket(self) -> list[int]:
        """The bucket counts, per bucket (undoing `cumulative`)."""
        if not self.cumulative:
            return self.buckets
        previous, out = 0, []
        for value in self.buckets:
            out.append(value - previous)
            previous = value
        return out


class Push(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    source: Source
    series: list[PushSeries]
    interval_s: float = 10.0
    side: Side = "server"


def validate(push: Push) -> None:
    """Raise `InvalidArgument` naming the first field of `push` that cannot be right."""
    _check_name(push.source.service, "$.source.service")
    _check_text(push.source.instance, "$.source.instance", MAX_NAME, empty=True)
    if not MIN_INTERVAL <= push.interval_s <= MAX_INTERVAL:
        raise _bad("$.interval_s", f"must be between {MIN_INTERVAL:g} and {MAX_INTERVAL:g}")
    if len(push.series) > MAX_SERIES_PER_PUSH:
        raise _bad("$.series", f"at most {MAX_SERIES_PER_PUSH} series per push")
    for i, series in enumerate(push.series):
        _check_series(series, f"$.series[{i}]")


def _check_series(series: PushSeries, at: str) -> None:
    _check_name(series.service, f"{at}.service")
    if series.caller is not None:
        _check_name(series.caller, f"{at}.caller")
    _check_text(series.route, f"{at}.route", MAX_ROUTE)
    _check_text(series.method, f"{at}.method", 16)
    if series.status_class not in STATUS_CLASSES:
        choices = ", ".join(sorted(STATUS_CLASSES))
        raise _bad(f"{at}.status_class", f"must be one of {choices}")
    if not 0 <= series.count <= MAX_COUNT:
        raise _bad(f"{at}.count", f"must be between 0 and {MAX_COUNT}")
    if not 0 <= series.errors <= series.count:
        raise _bad(f"{at}.errors", "must be between 0 and count")
    if not (math.isfinite(series.sum) and series.sum >= 0):
        raise _bad(f"{at}.sum", "must be a finite number of seconds, not negative")
    if series.bounds is not None and tuple(series.bounds) != LATENCY_BUCKETS:
        raise _bad(f"{at}.bounds", "differ from the shared latency bucket bounds")
    _check_buckets(series, f"{at}.buckets")


def _check_buckets(series: PushSeries, at: str) -> None:
    if len(series.buckets) != BUCKET_COUNT:
        raise _bad(at, f"must have {BUCKET_COUNT} counts (one per bound, then +Inf)")
    counts = series.per_bucket()
    if any(c < 0 for c in counts):
        problem = "must not decrease" if series.cumulative else "must not be negative"
        raise _bad(at, problem)
    if sum(counts) != series.count:
        raise _bad(at, f"add up to {sum(counts)}, but count is {series.count}")


def _check_name(value: str, at: str) -> None:
    _check_text(value, at, MAX_NAME)
    if any(c.isspace() or c in "{}\"'" for c in value):
        raise _bad(at, "must not contain spaces, quotes or braces")


def _check_text(value: str, at: str, limit: int, *, empty: bool = False) -> None:
    if not value and not empty:
        raise _bad(at, "must not be empty")
    if len(value) > limit:
        raise _bad(at, f"must be at most {limit} characters")
    if not value.isprintable():
        raise _bad(at, "must be printable text")


def _bad(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(f"{field} {problem}", field=field)
