"""Pure ASGI middleware: request metrics and access log, and bearer-token auth.

Pure ASGI (not Starlette's `BaseHTTPMiddleware`) so that streamed responses —
Server-Sent Events, long polls — pass through unbuffered and cancellation
reaches the handler.

The stack, outermost first (see `crossway.server.app`):

    RequestObserver → ErrorBoundary → BearerAuth → Starlette router

- `RequestObserver` sees every answer, errors and 401s included. It counts
  `http_server_requests_total` and times `http_server_request_duration_seconds`,
  both labelled `{service,route,method,status_class}` as every Crossway
  process labels them (`service` is `crossway-control-plane`), and writes one
  access log line per request. `route` is the matched route *template*
  (`/v1/services/{service}`), never the raw path, and methods outside the
  standard set count as `other`, so label cardinality is bounded whatever
  clients send. Requests that never reached a route (404s, and requests
  refused by auth, which runs before routing) are labelled `unmatched`.
  The labelled children are looked up once per (method, route, status) and
  kept: `labels()` validates and locks on every call, a measurable share of
  a request that costs tens of microseconds.
- Access log levels (`access_level`): probes (`/healthz`, `/readyz`,
  `/metrics`) always at debug; otherwise 5xx at warning, 4xx and requests
  that never got an answer at info, successful changes (PUT, POST, DELETE …) at
  info, and successful reads (GET, HEAD, OPTIONS) and heartbeats (routes
  declared as `QuietRoute`) at debug, as Consul logs its HTTP API. At tens of
  thousands of requests a second a line per read or renewal would cost more
  than answering them, and would drown the lines that matter.
  Names, bucket bounds and label helpers come from `crossway.telemetry.metrics`
  (the conventions every Crossway process follows), so one query or
  dashboard covers the control plane beside the services.
- `BearerAuth` lets `/healthz` and `/readyz` through and wants
  `Authorization: Bearer <token>` on everything else. Both tokens are hashed
  before `hmac.compare_digest`, so neither the content nor the length of the
  expected token leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crossway.core.clock import Clock
from crossway.core.errors import Unauthorized
from crossway.server.http import QuietRoute, error_response
from crossway.telemetry.metrics import (
    HTTP_SERVER_DURATION,
    HTTP_SERVER_IN_FLIGHT,
    HTTP_SERVER_REQUESTS,
    LATENCY_BUCKETS,
    SERVER_LABELS,
    UNMATCHED,
    method_label,
    status_class,
)
from crossway.telemetry.metrics import (
    KNOWN_METHODS as KNOWN_METHODS,
)

access_log = logging.getLogger("crossway.access")

SERVICE = "crossway-control-plane"
"""The control plane's `service` label value."""
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class HttpMetrics:
    """The server's own request metrics, registered on one registry."""

    def __init__(self, registry: CollectorRegistry, *, service: str = SERVICE) -> None:
        self.service = service
        self.requests = Counter(
            HTTP_SERVER_REQUESTS,
            "HTTP requests answered, by service, route template, method and status class.",
            SERVER_LABELS,
            registry=registry,
        )
        self.duration = Histogram(
            HTTP_SERVER_DURATION,
            "Time from request start to the end of the response, by route template.",
            SERVER_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            HTTP_SERVER_IN_FLIGHT,
            "Requests being served now (long polls and event streams included).",
            registry=registry,
        )
        # A plain count read at scrape time: the gauge's own inc/dec take a
        # lock each, twice per request, for a value only a scrape reads.
        self.in_flight_count = 0
        self.in_flight.set_function(lambda: self.in_flight_count)

        # (method, route, status) -> its children; bounded, as the labels are.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = (self.service, route, method, status_class(status))
            children = (self.requests.labels(*labels), self.duration.labels(*labels))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def access_level(method: str, status: int, *, quiet: bool) -> int:
    """The level of a request's access log line; see the module header."""
    if status >= 500:
        return logging.WARNING
    if status >= 400 or status == 0:
        return logging.INFO
    if quiet or method in READ_METHODS:
        return logging.DEBUG
    return logging.INFO


def route_label(scope: Scope) -> str:
    """The template of the route Starlette matched, stored in the shared scope."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class RequestObserver:
    """Metrics and the access log for every HTTP request; see the module header."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, clock: Clock) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = self.clock.now()
        status = 0

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight_count += 1
        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.metrics.in_flight_count -= 1
            self._record(scope, status, self.clock.now() - start)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        method, route = method_label(scope["method"]), route_label(scope)
        self.metrics.observe(method, route, status, seconds)
        if scope["path"] in PROBE_PATHS:
            level = logging.DEBUG  # probes come every few seconds, whatever they answer
        else:
            level = access_level(method, status, quiet=isinstance(scope.get("route"), QuietRoute))
        if not access_log.isEnabledFor(level):
            return
        client = scope.get("client")
        access_log.log(
            level,
            "request",
            extra={
                "method": scope["method"],
                "route": route,
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "remote": f"{client[0]}:{client[1]}" if client else None,
            },
        )


class BearerAuth:
    """Requires `Authorization: Bearer <token>` outside `open_paths` and the
    requests `public` accepts (the dashboard's shell and assets, which hold no
    data: the page asks for the token and sends it with every API call)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        open_paths: frozenset[str] = OPEN_PATHS,
        public: Callable[[Scope], bool] | None = None,
    ) -> None:
        if not token:
            raise ValueError("an empty token would let anyone in")
        self.app = app
        self.open_paths = open_paths
        self.public = public
        self._expected = _digest(token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or scope["path"] in self.open_paths
            or (self.public is not None and self.public(scope))
        ):
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": problem})
        else:
            challenge = {"WWW-Authenticate": 'Bearer realm="crossway"'}
            await error_response(Unauthorized(problem), headers=challenge)(scope, receive, send)

    def _problem(self, scope: Scope) -> str | None:
        """None when the request carries the right token, else what is wrong."""
        header = _header(scope, b"authorization")
        if header is None:
            return "this API needs a token: send Authorization: Bearer <token>"
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not credentials.strip():
            return "the Authorization header must be: Bearer <token>"
        if not hmac.compare_digest(_digest(credentials.strip()), self._expected):
            return "the token is not valid"
        return None


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            found: bytes = value
            return found
    return None
