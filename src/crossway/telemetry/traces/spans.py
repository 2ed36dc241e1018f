"""Spans a Crossway process records about its own requests, and head sampling.

Theory of operation
- A process that serves or sends a request (the SDK middleware and
  transport, the gateway) knows the request's `TraceContext`; at the end it
  builds one Zipkin v2 `Span` with `server_span` or `client_span` and hands
  it to a `SpanReporter` (reporter.py). The attributes follow OpenTelemetry's
  HTTP semantic conventions, as tags: `http.request.method`, `url.path`,
  `http.route`, `http.response.status_code`, `server.address`, and on client
  spans `url.full`, `peer.service` and `http.request.resend_count` (the
  retry number; absent on the first attempt). A 5xx, or an exception in
  place of an answer, adds Zipkin's `error` tag.
- Ids: the span's id is the context's `span_id`, its parent the context's
  `parent_id`. A client span's id is the one its request carries in
  `traceparent`, so the callee's server span (a `child()` of that context)
  is the client span's child, and a trace reads
  server → client → server … across services.
- Sampling: `Sampler.context_for(parent)` keeps the caller's decision (the
  sampled flag of the incoming `traceparent` or B3 headers) and decides with
  `rate` only for a new trace. Unsampled requests still carry their context
  downstream (flag 0) so the whole trace is left out consistently; no span
  is built for them. The default rate is 1: the control plane samples at the
  tail, where it knows which traces were slow or failed.

- `HttpServerSpan` is the same SERVER span as a leaner value for a sender
  that makes one per request at high rates (the gateway): built positionally,
  its local endpoint and tags are JSON already encoded (`msgspec.Raw`), which
  the sender encodes once per distinct value (`encoded_tags`,
  `encoded_endpoint`) and shares between the spans that carry it. Encoding
  a batch then copies those bytes instead of escaping a dozen strings per
  span (-60% of the encoder's work per span), and the JSON is the same
  Zipkin v2 a `Span` encodes to (absent tags are left out).

Pure: builders take the times they record; nothing here reads a clock except
`micros_now`, or does I/O.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from crossway.telemetry.tracecontext import TraceContext
from crossway.telemetry.traces.model import Endpoint, Span

METHOD = "http.request.method"
PATH = "url.path"
ROUTE = "http.route"
STATUS = "http.response.status_code"
SERVER_ADDRESS = "server.address"
URL = "url.full"
PEER_SERVICE = "peer.service"
RESEND_COUNT = "http.request.resend_count"
ERROR = "error"


class HttpServerTags(
    msgspec.Struct,
    omit_defaults=True,
    gc=False,
    rename={
        "method": METHOD,
        "path": PATH,
        "route": ROUTE,
        "status": STATUS,
        "server_address": SERVER_ADDRESS,
        "client_address": "client.address",
        "peer_service": PEER_SERVICE,
        "upstream": "crossway.upstream",
        "error": ERROR,
    },
):
    """The tags of an `HttpServerSpan`, under their OpenTelemetry names."""

    method: str
    path: str
    route: str | None = None
    status: str | None = None
    server_address: str | None = None
    client_address: str | None = None
    peer_service: str | None = None
    upstream: str | None = None
    error: str | None = None


class HttpServerSpan(msgspec.Struct, rename="camel", omit_defaults=True, gc=False):
    """A SERVER span that encodes as a Zipkin v2 `Span` (see the module header)."""

    trace_id: str
    id: str
    parent_id: str | None
    name: str
    kind: Literal["SERVER"]
    timestamp: int
    duration: int
    local_endpoint: msgspec.Raw
    """An `Endpoint` as JSON (`encoded_endpoint`)."""
    tags: msgspec.Raw
    """`HttpServerTags` as JSON (`encoded_tags`)."""


_encode = msgspec.json.Encoder().encode


def encoded_tags(tags: HttpServerTags) -> msgspec.Raw:
    """`tags` as the JSON an `HttpServerSpan` carries."""
    return msgspec.Raw(_encode(tags))


def encoded_endpoint(endpoint: Endpoint) -> msgspec.Raw:
    """`endpoint` as the JSON an `HttpServerSpan` carries."""
    return msgspec.Raw(_encode(endpoint))


def micros_now() -> int:
    """Wall-clock microseconds since the epoch (Zipkin's timestamp unit)."""
    return time.time_ns() // 1000


class Sampler:
    """Head sampling: the caller's decision when there is one, else `rate`."""

    __slots__ = ("_rand", "rate")

    def __init__(self, rate: float = 1.0, *, rand: Callable[[], float] = random.random) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"a sampling rate is between 0 and 1, got {rate!r}")
        self.rate = rate
        self._rand = rand

    def sample_new(self) -> bool:
        """Whether a trace that starts here is sampled."""
        rate = self.rate
        return rate >= 1.0 or (rate > 0.0 and self._rand() < rate)

    def context_for(self, parent: TraceContext | None) -> TraceContext:
        """The context of the span serving a request that came with `parent`."""
        if parent is None:
            return TraceContext.root(sampled=self.sample_new())
        return parent.child()


def span_name(method: str, route: str | None) -> str:
    """OpenTelemetry's HTTP span name: `GET /items/{id}`, or the method alone."""
    return f"{method} {route}" if route else method


def error_tag(status: int, error: BaseException | str | None) -> str | None:
    """The `error` tag's value: the exception (or message), else a 5xx status."""
    if isinstance(error, BaseException):
        return str(error) or type(error).__name__
    if error:
        return error
    if status >= 500 or status == 0:
        return str(status) if status else "no response"
    return None


def server_span(ctx: TraceContext, **fields: Any) -> Span:
    """The SERVER span of a request served in context `ctx` (fields as for
    `make_server_span`)."""
    return make_server_span(
        trace_id=ctx.trace_id, span_id=ctx.span_id, parent_id=ctx.parent_id, **fields
    )


def make_server_span(
    *,
    trace_id: str,
    span_id: str,
    parent_id: str | None,
    local: Endpoint,
    method: str,
    path: str,
    route: str | None,
    status: int,
    start_us: int,
    duration_us: int,
    server_address: str | None = None,
    error: BaseException | str | None = None,
    tags: dict[str, str] | None = None,
) -> Span:
    """The SERVER span with these ids (`parent_id`: the caller's span)."""
    found = tags if tags is not None else {}
    found[METHOD] = method
    found[PATH] = path
    if route:
        found[ROUTE] = route
    if status:
        found[STATUS] = str(status)
    if server_address:
        found[SERVER_ADDRESS] = server_address
    failure = error_tag(status, error)
    if failure is not None:
        found[ERROR] = failure
    return Span(
        trace_id=trace_id,
        id=span_id,
        parent_id=parent_id,
        name=span_name(method, route),
        kind="SERVER",
        timestamp=start_us,
        duration=max(1, duration_us),
        local_endpoint=local,
        tags=found,
    )


def client_span(
    *,
    trace_id: str,
    span_id: str,
    parent_id: str | None,
    local: Endpoint,
    peer_service: str,
    method: str,
    url: str,
    status: int,
    start_us: int,
    duration_us: int,
    attempt: int = 1,
    server_address: str | None = None,
    error: BaseException | str | None = None,
) -> Span:
    """The CLIENT span of one attempt (`attempt` counts from 1) to `peer_service`."""
    tags = {METHOD: method, URL: url, PEER_SERVICE: peer_service}
    if status:
        tags[STATUS] = str(status)
    if attempt > 1:
        tags[RESEND_COUNT] = str(attempt - 1)
    if server_address:
        tags[SERVER_ADDRESS] = server_address
    failure = error_tag(status, error)
    if failure is not None:
        tags[ERROR] = failure
    return Span(
        trace_id=trace_id,
        id=span_id,
        parent_id=parent_id,
        name=method,
        kind="CLIENT",
        timestamp=start_us,
        duration=max(1, duration_us),
        local_endpoint=local,
        remote_endpoint=Endpoint(service_name=peer_service),
        tags=tags,
    )
