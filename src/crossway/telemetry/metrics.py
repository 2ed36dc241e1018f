"""Metric naming conventions shared by every Crossway process, and helpers to follow them.

Theory of operation
- Names are the OpenTelemetry HTTP semantic conventions as Prometheus spells
  them: `http.server.request.duration` (unit `s`) becomes
  `http_server_request_duration_seconds`, `http.client.request.duration`
  becomes `http_client_request_duration_seconds`. Each histogram has a
  request counter beside it (`http_server_requests_total`,
  `http_client_requests_total`) with the same labels, so rates and success
  ratios need no histogram at all.
- Labels: `service` (the service the process belongs to), `route` (the route
  *template*, `/orders/{id}`, never the raw path), `method` (the standard
  methods, anything else is `other`) and `status_class` (`2xx` … `5xx`, `none`
  when no response was ever sent). Client metrics add `peer_service`, the
  service called, so a caller→callee edge is `{service, peer_service}`.
- One set of latency bucket bounds (`LATENCY_BUCKETS`, seconds) is shared by
  the Prometheus histograms and by the golden-signal histograms the SDK,
  gateway and sidecars push to the control plane, so the two always agree and
  a pushed histogram is merged by adding counts. The bounds are a superset of
  OpenTelemetry's recommended HTTP boundaries, and finer in the 1 ms – 1 s
  range where quantile estimates matter most.
- Cardinality is bounded on purpose: route templates and normalised methods
  keep most labels small by construction; what remains open-ended (route
  templates from user code, peer names) goes through a `LabelBudget`, which
  admits the first N distinct values of a label and maps every later one to
  `OVERFLOW`. Totals stay right; only the breakdown is capped.

Invariants
1. `status_class`, `method_label` and `LabelBudget.admit` never raise and
   always return a value from a bounded set.
2. A `LabelBudget` never admits more than `limit` distinct values.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram

HTTP_SERVER_DURATION = "http_server_request_duration_seconds"
HTTP_SERVER_REQUESTS = "http_server_requests"
"""Counter name as given to prometheus_client; it is exposed with `_total`."""
HTTP_SERVER_REQUESTS_TOTAL = HTTP_SERVER_REQUESTS + "_total"
HTTP_SERVER_IN_FLIGHT = "http_server_requests_in_flight"
HTTP_CLIENT_DURATION = "http_client_request_duration_seconds"
HTTP_CLIENT_REQUESTS = "http_client_requests"
HTTP_CLIENT_REQUESTS_TOTAL = HTTP_CLIENT_REQUESTS + "_total"
SERVICE_INSTANCES = "crossway_service_instances"
"""Registered instances per service and health status (a gauge the control plane exposes)."""

SERVER_LABELS = ("service", "route", "method", "status_class")
CLIENT_LABELS = ("service", "peer_service", "route", "method", "status_class")

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.35,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds, inclusive) of the latency buckets; +Inf is implied."""

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
OTHER_METHOD = "other"
UNMATCHED = "unmatched"
"""The route of a request that matched no route (404s, requests refused before routing)."""
OVERFLOW = "overflow"
"""The label value that stands for every value past a `LabelBudget`'s limit."""
STATUS_CLASSES = frozenset({"1xx", "2xx", "3xx", "4xx", "5xx", "none"})


_CLASS_BY_HUNDRED = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
_ERROR_CLASSES = frozenset({"5xx", "none"})


def status_class(status: int) -> str:
    """ "2xx" … "5xx"; "none" when no response was ever started (cancelled)."""
    # A table lookup, not formatting: this runs for every request.
    return _CLASS_BY_HUNDRED[status // 100] if 100 <= status <= 599 else "none"


def is_error(status_class_value: str) -> bool:
    """Whether a request of this class failed: a 5xx, or no response at all.

    4xx answers are the caller's mistake, not the service failing, so they count
    as successes (as Linkerd's success rate does).
    """
    return status_class_value in _ERROR_CLASSES


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


class LabelBudget:
    """Admits the first `limit` distinct values of one label; later ones become `OVERFLOW`.

    Safe to share between threads: a value is admitted under a lock, and
    looking up an admitted value takes no lock (set membership is atomic).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a label budget must admit at least one value")
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.overflowed = 0
        """How many times a value was mapped to `OVERFLOW`."""

    def admit(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
            self.overflowed += 1
            return OVERFLOW

    def __len__(self) -> int:
        return len(self._seen)


class HttpServerMetrics:
    """`http_server_requests_total` and `http_server_request_duration_seconds`
    for one service, with bounded route cardinality.

    For any process that serves HTTP (the gateway, a sidecar's inbound side, a
    service through the SDK middleware). `observe` never raises for odd input.
    """

    def __init__(self, registry: CollectorRegistry, *, service: str, max_routes: int = 200) -> None:
        self.service = service
        self.routes = LabelBudget(max_routes)
        self.requests = Counter(
            HTTP_SERVER_REQUESTS,
            "HTTP requests served, by service, route template, method and status class.",
            SERVER_LABELS,
            registry=registry,
        )
        self.duration = Histogram(
            HTTP_SERVER_DURATION,
            "Duration of HTTP server requests, from the first byte in to the last byte out.",
            SERVER_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        route = self.routes.admit(route)
        labels = (self.service, route, method_label(method), status_class(status))
        self.requests.labels(*labels).inc()
        self.duration.labels(*labels).observe(max(0.0, seconds))


class HttpClientMetrics:
    """`http_client_requests_total` and `http_client_request_duration_seconds`
    for calls made by one service, with bounded peer and route cardinality."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        service: str,
        max_peers: int = 100,
        max_routes: int = 200,
    ) -> None:
        self.service = service
        self.peers = LabelBudget(max_peers)
        self.routes = LabelBudget(max_routes)
        self.requests = Counter(
            HTTP_CLIENT_REQUESTS,
            "HTTP requests sent, by calling service, called service, route, method and status.",
            CLIENT_LABELS,
            registry=registry,
        )
        self.duration = Histogram(
            HTTP_CLIENT_DURATION,
            "Duration of HTTP client requests, as the caller saw them.",
            CLIENT_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(
        self, peer_service: str, route: str, method: str, status: int, seconds: float
    ) -> None:
        labels = (
            self.service,
            self.peers.admit(peer_service),
            self.routes.admit(route),
            method_label(method),
            status_class(status),
        )
        self.requests.labels(*labels).inc()
        self.duration.labels(*labels).observe(max(0.0, seconds))
