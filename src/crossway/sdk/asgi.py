"""FastAPI / Starlette integration: a lifespan that runs the SDK client, and a
pure ASGI middleware for inbound metrics, tracing, deadlines and rate limits.

    client = crossway.Client()                        # CROSSWAY_* variables
    app = FastAPI(lifespan=lifespan(client))          # register on start, deregister on stop
    app.add_middleware(CrosswayMiddleware, client=client, rate_limit="200/s")
    app.add_route("/metrics", metrics_endpoint(client))

Theory of operation
-------------------
- `lifespan(client, inner)` starts the client when the server starts the
  application — in each worker, after a pre-fork server forked — then the
  config bindings made for it (`client.bind(...)`), then the user's own
  lifespan `inner`, whose state it passes through. Shutdown runs in reverse:
  `inner` ends, the bindings stop, the client deregisters and closes. A
  client or binding that fails to start fails the server's start-up.
- `CrosswayMiddleware` is pure ASGI (no `BaseHTTPMiddleware`), so streamed
  responses pass unbuffered and cancellation reaches the handler. For each
  HTTP request, in order:
    1. rate limit (skipped for `exempt_paths`): a pure limiter from
       crossway.resilience, global or per key; a refusal answers 429 with
       `Retry-After` and the JSON error `rate_limited`, before any routing;
    2. trace context: the request's `traceparent` (or B3) is extracted and
       a child of it — this service's server span — becomes the current
       trace, so calls made through the SDK transport continue the trace;
       a request without one starts a new trace (sampled at the client's
       `trace_sample_rate`; a caller's sampled flag is kept).
    3. deadline: `X-Crossway-Deadline` (milliseconds left, as the SDK
       transport sends it) becomes the current deadline, so outbound calls
       inherit what is left; a request that arrives with no time left gets
       504 `deadline_exceeded` without running the handler. The deadline is
       cooperative here: the handler is not cancelled.
    4. metrics: `http_server_requests_total` and
       `http_server_request_duration_seconds{service,route,method,status_class}`
       on the client's registry, with the matched route *template*
       (`/items/{id}`; prefixed by its mount's path), `unmatched` for
       requests no route took, bounded by a label budget. A handler that
       raises without answering counts as 500 (the server answers so), a
       request cancelled before any answer as `none`.
    5. telemetry (a client with `telemetry`, crossway.sdk.telemetry): the
       request goes into the server-side golden signals (the caller from
       `X-Crossway-Caller`), and a sampled request becomes a SERVER span
       (method, path, route template, status, host; `error` on a 5xx or an
       exception) sent to the control plane in batches. Probe paths
       (`/metrics`, `/healthz`, `/readyz`, `/livez`) are left out of both.
- `metrics_endpoint(client)` serves the client's registry in the Prometheus
  (or OpenMetrics, by `Accept`) text format.

Invariants: the trace context and deadline are restored when the request
ends, however it ends; every request is observed exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crossway.core.errors import CrosswayError, InvalidArgument
from crossway.resilience import (
    Deadline,
    DeadlineExceeded,
    KeyedLimiter,
    RateLimited,
    RateLimiter,
    TokenBucket,
    deadline_scope,
)
from crossway.resilience.limiter import Decision
from crossway.sdk.telemetry import ServiceTelemetry, wall_micros
from crossway.sdk.transport import DEADLINE_HEADER
from crossway.telemetry.metrics import UNMATCHED, HttpServerMetrics, method_label, status_class
from crossway.telemetry.tracecontext import (
    TraceContext,
    extract,
    reset_current_trace,
    set_current_trace,
)

log = logging.getLogger("crossway.sdk")

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]
RateLimit = str | float | RateLimiter
"""A rate ("100/s", "5/m", or permits per second) or a ready limiter."""
KeyFunction = Callable[[Scope], str]

EXEMPT_PATHS = ("/metrics", "/healthz", "/readyz", "/livez")
_UNTRACED = frozenset(EXEMPT_PATHS)
_DEADLINE = DEADLINE_HEADER.lower()
_WANTED = frozenset(
    {"traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled"}
    | {"x-b3-parentspanid", "x-b3-flags", _DEADLINE, "x-crossway-caller", "host"}
)


# -- lifespan ---------------------------------------------------------------------------------


def lifespan(client: Any, inner: Lifespan | None = None) -> Lifespan:
    """A lifespan for `FastAPI(lifespan=...)` / `Starlette(lifespan=...)` that
    runs `client` (and its config bindings) around the optional `inner` one.

    Start-up fails with whatever `client.start()` or a binding raises (the
    server then refuses to start); the client is stopped again first.
    Shutdown always stops the bindings and the client, even when `inner`
    fails or the shutdown is cancelled.
    """

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        settings = client.settings
        if getattr(settings, "register_when_listening", False) and settings.port is not None:
            address, port = settings.address, settings.port
            await client.start(register_after=lambda: until_listening(address, port))
        else:
            await client.start()
        try:
            await _start_bindings(client)
            state = getattr(app, "state", None)
            if state is not None:
                state.crossway = client  # request.app.state.crossway in handlers
            if inner is None:
                yield None
            else:
                async with inner(app) as inner_state:
                    yield inner_state
        finally:
            try:
                await _stop_bindings(client)
            finally:
                await client.stop()

    return run


LISTEN_WAIT = 60.0
"""Seconds a deferred registration waits for the server to listen before
registering anyway (with a warning)."""


async def until_listening(
    address: str, port: int, *, wait: float = LISTEN_WAIT, every: float = 0.02
) -> None:
    """Return once `address:port` accepts a TCP connection, or after `wait`
    seconds (logged: the server may listen on another address)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), every * 10)
        except (OSError, TimeoutError):
            await asyncio.sleep(every)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    log.warning("nothing listens on %s:%d after %gs; registering anyway", address, port, wait)


async def _start_bindings(client: Any) -> None:
    # Nobody bound a config unless the config module was imported: skip it then.
    config = sys.modules.get("crossway.sdk.config")
    if config is not None:
        await config.start_bindings(client)


async def _stop_bindings(client: Any) -> None:
    config = sys.modules.get("crossway.sdk.config")
    if config is not None:
        await config.stop_bindings(client)


# -- metrics -----------------------------------------------------------------------------------

_SERVER_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, HttpServerMetrics] = (
    weakref.WeakKeyDictionary()
)


def _server_metrics(registry: CollectorRegistry, service: str) -> HttpServerMetrics:
    # One set per registry: prometheus_client refuses to register a name twice.
    found = _SERVER_METRICS.get(registry)
    if found is None:
        found = _SERVER_METRICS[registry] = HttpServerMetrics(registry, service=service)
    return found


class _Observer:
    """Counts and times requests; the labelled children are looked up once per
    (route, method, status class) — `labels()` validates and locks per call."""

    def __init__(self, metrics: HttpServerMetrics) -> None:
        self.metrics = metrics
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status_class(status))
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            labels = (m.service, m.routes.admit(route), method_label(method), key[2])
            children = (m.requests.labels(*labels), m.duration.labels(*labels))
            self._children[key] = children
        children[0].inc()
        children[1].observe(max(0.0, seconds))


def route_template(scope: Scope) -> str:
    """The template of the route the router matched, with its mount's prefix."""
    path = getattr(scope.get("route"), "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    if "app_root_path" in scope:  # set by a Mount: root_path grew by the mount's path
        mounted = str(scope.get("root_path", ""))[len(str(scope["app_root_path"])) :]
        return mounted + path
    return path


def metrics_endpoint(client: Any) -> Callable[[Request], Any]:
    """A Starlette endpoint serving `client.metrics_registry`:
    `app.add_route("/metrics", metrics_endpoint(client))`."""
    registry = client.metrics_registry

    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), headers={"Content-Type": content_type})

    return metrics


# -- rate limits -------------------------------------------------------------------------------


def build_limiter(
    rate_limit: RateLimit | None, key: KeyFunction | None
) -> Callable[[Scope, float], Decision] | None:
    """The admission check for `rate_limit` (None: no limit); per `key(scope)`
    when a key function is given, which needs a rate, not a ready limiter."""
    if rate_limit is None:
        if key is not None:
            raise InvalidArgument("rate_limit_key needs a rate_limit", field="rate_limit_key")
        return None
    if isinstance(rate_limit, str | int | float):
        rate = rate_limit
        if key is None:
            bucket = TokenBucket(rate=rate)
            return lambda scope, now: bucket.try_acquire(now)
        keyed: KeyedLimiter[str] = KeyedLimiter(lambda _: TokenBucket(rate=rate))
        return lambda scope, now: keyed.try_acquire(key(scope), now)
    if key is not None:
        raise InvalidArgument(
            "a per-key rate limit takes a rate such as '10/s'", field="rate_limit"
        )
    limiter = rate_limit
    return lambda scope, now: limiter.try_acquire(now)


def client_address(scope: Scope) -> str:
    """A key function: the peer's address (behind a proxy, key on a header instead)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


# -- the middleware ----------------------------------------------------------------------------


class CrosswayMiddleware:
    """Inbound rate limit, tracing, deadline and metrics; see the module header.

    `app.add_middleware(CrosswayMiddleware, client=client, rate_limit="100/s")`.
    `rate_limit_key(scope) -> str` limits per key (e.g. `client_address`);
    `exempt_paths` are never rate limited; `max_routes` bounds the route label.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: Any,
        rate_limit: RateLimit | None = None,
        rate_limit_key: KeyFunction | None = None,
        exempt_paths: Iterable[str] = EXEMPT_PATHS,
        metrics: bool = True,
    ) -> None:
        self.app = app
        self.client = client
        self._limit = build_limiter(rate_limit, rate_limit_key)
        self._exempt = frozenset(exempt_paths)
        self._now = client.clock.now
        self._telemetry: ServiceTelemetry | None = getattr(client, "telemetry", None)
        self._observer: _Observer | None = None
        if metrics:
            service = client.settings.service or "unknown"
            self._observer = _Observer(_server_metrics(client.metrics_registry, service))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = _Status(send)
        found = _headers(scope)
        ctx = self._context(found)
        failure: BaseException | None = None
        try:
            await self._serve(scope, receive, answered, found, ctx)
        except BaseException as exc:
            if answered.status == 0 and isinstance(exc, Exception):
                answered.status = 500  # the server's error handler answers 500
                failure = exc
            raise
        finally:
            seconds = time.perf_counter() - started
            route = route_template(scope)
            if self._observer is not None:
                self._observer.observe(route, scope["method"], answered.status, seconds)
            if self._telemetry is not None and scope["path"] not in _UNTRACED:
                self._telemetry.served(
                    ctx=ctx,
                    headers=found,
                    method=scope["method"],
                    path=scope["path"],
                    route=route,
                    status=answered.status,
                    start_us=wall_micros(started),
                    seconds=seconds,
                    error=failure,
                )

    def _context(self, found: dict[str, str]) -> TraceContext:
        parent = extract(found)
        if self._telemetry is not None:
            return self._telemetry.sampler.context_for(parent)
        return parent.child() if parent is not None else TraceContext.root()

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: _Status,
        found: dict[str, str],
        ctx: TraceContext,
    ) -> None:
        if self._limit is not None and scope["path"] not in self._exempt:
            decision = self._limit(scope, self._now())
            if not decision.allowed:
                await _refuse(send, RateLimited(retry_after=decision.retry_after))
                return
        token = set_current_trace(ctx)
        try:
            deadline = _deadline(found.get(_DEADLINE), self.client.clock)
            if deadline is None:
                await self.app(scope, receive, send)
            elif deadline.expired():
                await _refuse(send, DeadlineExceeded("the caller's deadline passed on arrival"))
            else:
                with deadline_scope(deadline=deadline):  # cooperative: inherited, not enforced
                    await self.app(scope, receive, send)
        finally:
            reset_current_trace(token)


class _Status:
    """The `send` callable, noting the response status on the way."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self.send(message)


def _headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        if name in _WANTED:
            found[name] = raw_value.decode("latin-1")
    return found


def _deadline(raw: str | None, clock: Any) -> Deadline | None:
    """The deadline `X-Crossway-Deadline: <ms>` sets; None when absent or malformed."""
    if raw is None or not raw.strip().isdigit():
        return None
    return Deadline.after(int(raw) / 1000.0, clock=clock)


async def _refuse(send: _Status, error: CrosswayError) -> None:
    body = msgspec.json.encode(error.to_json())
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:  # whole seconds, at least 1 (RFC 9110 delta-seconds)
        headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
