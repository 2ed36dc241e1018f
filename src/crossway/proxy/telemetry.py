# The gateway's telemetry: golden signals, a span per request, trace
# propagation upstream, and access logs.
#
# Theory of operation
# -------------------
# `GatewayTelemetry` is called by the gateway at three points of a request:
#
#   begin(stream)        at the start: reads the client's trace context
#                        (W3C traceparent/tracestate, else B3 single, else B3
#                        multi), makes the gateway's SERVER span context (the
#                        client's sampled flag kept; a new trace sampled at
#                        `trace_sample_rate`) and makes the request current
#                        (a context variable: the gateway reads it where it
#                        builds the upstream request, without threading it
#                        through every call);
#   upstream(extra, drop, service, endpoint)
#                        where the upstream request head is built: the
#                        client's trace fields are dropped and replaced by the
#                        gateway span's (`traceparent`, `tracestate`, and the
#                        B3 form the client used, if it used B3), plus
#                        `X-Crossway-Caller: gateway`; the chosen backend and
#                        endpoint are noted for the span and the signals;
#   finish(...)          in the handler's `finally`: one `Recorder.record`
#                        (client side: service = backend, caller = "gateway",
#                        route = route name), one span if sampled, one access
#                        log line if the access log takes it.
#
# `begin_request`, `upstream_for` and `finish_request` are the same three
# steps without the context variable, for a caller that keeps the
# `RequestTelemetry` itself (one set and one reset fewer per request).
#
# The hot path stays cheap:
# - the gateway's own two clock reads are reused (a span's wall-clock start
#   is the monotonic start plus an offset taken once);
# - one 192-bit draw makes the trace id and the span id;
# - a client that sent no trace field and no caller header (most) has
#   nothing to drop upstream: the route's removals are passed on unchanged,
#   and only `x-crossway-caller` and `traceparent` are added;
# - the signals go straight into the recorder's cell for the request's key,
#   kept here until the recorder's next snapshot (`Recorder.cell`);
# - a span's tags and name repeat from one request of a route to the next:
#   they are worked out and JSON-encoded once per distinct set (keyed on the
#   path without the query, never the whole target), and each span carries
#   the encoded bytes, so encoding a batch of spans copies them. The
#   client's address ends the tags, and an entry keeps the whole tags for
#   the client it saw last (most requests of a route come from a few
#   clients, or one load balancer). Only a short path and host are kept,
#   so the cache is bounded in bytes;
# - with the access log off nothing is formatted per request.
# The recorder is pushed by a `StatsPusher`, the spans sent in batches by a
# `SpanReporter` (crossway.telemetry), both owned here and started after fork.
#
# Access log: JSON lines on stdout, in proxy/access_log.py (its names are
# re-exported here).
#
# Invariants
# ----------
# - Telemetry never raises into the request path and never changes the
#   answer; a dead control plane costs dropped, counted data.
# - The upstream request carries exactly one trace context, the gateway
#   span's, when tracing is on; with tracing off the client's passes through.
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from bisect import bisect_left
from contextvars import ContextVar, Token
from dataclasses import dataclass

import msgspec

from crossway.balance import Endpoint as Upstream
from crossway.core.clock import Clock
from crossway.core.errors import InvalidArgument

# The access log was defined here once: its names are re-exported.
from crossway.proxy.access_log import AccessLog as AccessLog
from crossway.proxy.access_log import AccessLogMode as AccessLogMode
from crossway.proxy.access_log import access_entry
from crossway.proxy.access_log import parse_access_log as parse_access_log
from crossway.proxy.headers import Headers
from crossway.proxy.stream import Stream
from crossway.telemetry.signals.histogram import BOUNDS
from crossway.telemetry.signals.recorder import Cell, Recorder, StatsPusher
from crossway.telemetry.tracecontext import (
    RANDOM_TRACE_ID,
    SAMPLED,
    TraceContext,
    format_b3,
    format_b3_multi,
    format_tracestate,
    new_span_id,
    new_trace_id,
    parse_b3,
    parse_b3_multi,
    parse_traceparent,
    parse_tracestate,
)
from crossway.telemetry.traces.model import Endpoint
from crossway.telemetry.traces.reporter import SpanReporter
from crossway.telemetry.traces.spans import (
    HttpServerSpan,
    HttpServerTags,
    Sampler,
    encoded_endpoint,
    error_tag,
    span_name,
)

GATEWAY = "gateway"
CALLER = b"x-crossway-caller"
TRACE_FIELDS = frozenset(
    {b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid"}
    | {b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags"}
)
GATEWAY_BATCH = 2000
GATEWAY_BUFFER = 20_000
_DROPPED = TRACE_FIELDS | {CALLER}
_HEX = [f"{flags:02x}" for flags in range(256)]
_CACHE_LIMIT = 4096
# A span's tags are cached only for a path and host this long at most: the
# cache holds at most ~_CACHE_LIMIT x 1.3 KB (5.4 MB measured) whatever
# clients send; longer ones (rare, unlikely to repeat) are encoded each time.
_CACHED_TAG_BYTES = 256
_STATUS_TEXT = [str(status) if status else None for status in range(600)]
_ERROR_TAG = [error_tag(status, None) for status in range(600)]
_METHODS = {
    name.encode(): name
    for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
}
_SPAN_ID_BITS = (1 << 64) - 1
_NO_ACCESS_LOG = AccessLogMode()  # immutable, shared as a default
_NEW_SAMPLED = RANDOM_TRACE_ID | SAMPLED
_getrandbits = random.getrandbits


class RequestTelemetry(msgspec.Struct, gc=False):
    """What the gateway's telemetry knows about one request.

    Made for every request, so it is a Struct, built in C (a class with
    `__slots__` and an `__init__` costs as much again), and it keeps the
    gateway span's ids as plain fields rather than a `TraceContext`. It
    refers to nothing that could refer back to it, hence `gc=False`."""

    trace_id: str = ""  # "" with tracing off
    span_id: str = ""  # the gateway span's id
    flags: int = 0
    parent_id: str | None = None  # the client's span, if it sent one
    tracestate: str = ""
    b3: str = ""  # "", "single" or "multi": the form the client sent
    # The client sent trace fields or the caller header, which the upstream
    # request must not carry; most clients send neither.
    foreign: bool = False
    service: str = ""  # the backend service, once chosen
    # The endpoint of the latest attempt; set once the first attempt's
    # header edits carry the trace context (a retry's edits already do).
    upstream: Upstream | None = None

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def context(self) -> TraceContext:
        """The gateway span's context as a value (for the B3 formats)."""
        state = parse_tracestate(self.tracestate) if self.tracestate else ()
        return TraceContext(self.trace_id, self.span_id, self.flags, state or (), self.parent_id)


def _continued(parent: TraceContext, b3: str) -> RequestTelemetry:
    """A request that continues the client's trace under a new span."""
    flags = parent.flags & (SAMPLED | RANDOM_TRACE_ID)
    tracestate = format_tracestate(parent.tracestate)
    return RequestTelemetry(
        parent.trace_id, new_span_id(), flags, parent.span_id, tracestate, b3, True
    )


_CURRENT: ContextVar[RequestTelemetry | None] = ContextVar("crossway_gateway_request", default=None)
_SpanKey = tuple[str, str, int, bytes, bytes | None, str, int]
"""(method, route, status, path, host, service, id(upstream))."""


class _SpanParts:
    """What the spans of one `_SpanKey` share (see the module header)."""

    __slots__ = ("client", "head_length", "name", "tags", "upstream")

    def __init__(self, head: bytes, name: str, upstream: Upstream | None) -> None:
        # Until a client is set `tags` holds only the shared head: the tags'
        # JSON without the client's address and the closing brace.
        self.tags = msgspec.Raw(head)
        self.head_length = len(head)
        self.client: str | None = None
        self.name = name
        self.upstream = upstream


def extract_fields(headers: Headers) -> tuple[TraceContext | None, str]:
    """The client's trace context and which B3 form it used ("" for W3C or none)."""
    found: dict[str, str] = {}
    for name, value in headers:
        if name in TRACE_FIELDS:
            found[name.decode("latin-1")] = value.decode("latin-1")
    if not found:
        return None, ""
    parent = found.get("traceparent")
    if parent is not None:
        ctx = parse_traceparent(parent, found.get("tracestate"))
        if ctx is not None:
            return ctx, ""
    single = found.get("b3")
    if single is not None:
        ctx = parse_b3(single)
        if ctx is not None:
            return ctx, "single"
    ctx = parse_b3_multi(found)
    return ctx, "multi" if ctx is not None else ""


# -- the gateway's telemetry -------------------------------------------------------------


class GatewayTelemetry:
    """See the module header. Any part may be absent: `recorder`/`pusher`
    (no golden signals), `reporter` (no tracing), `access_log`."""

    def __init__(
        self,
        *,
        clock: Clock,
        recorder: Recorder | None = None,
        pusher: StatsPusher | None = None,
        reporter: SpanReporter | None = None,
        sampler: Sampler | None = None,
        access_log: AccessLog | None = None,
        name: str = GATEWAY,
    ) -> None:
        self.recorder = recorder
        self.pusher = pusher
        self.reporter = reporter
        self.sampler = sampler or Sampler()
        self.access_log = access_log
        self.name = name
        self._caller = name.encode("latin-1")
        self._caller_field = (CALLER, self._caller)
        self._local = encoded_endpoint(Endpoint(service_name=name))
        # Spans need wall-clock times; the gateway reads a monotonic clock.
        self._wall_offset = clock.wall() - clock.now()
        self._flusher: asyncio.Task[None] | None = None
        self._drops: dict[frozenset[bytes], frozenset[bytes]] = {}
        self._addresses: dict[tuple[str, int], str] = {}
        # What the requests of one route share, worked out once (the span's
        # tags and the signals' cell, in `finish_request`); each bounded,
        # cleared when full.
        self._span_parts: dict[_SpanKey, _SpanParts] = {}
        self._client_tags: dict[str, bytes] = {}
        self._cells: dict[tuple[str, str, str, int], Cell] = {}
        self._cells_generation = -1

    async def start(self) -> None:
        """Start pushing, sending and flushing the access log (after fork)."""
        if self.pusher is not None:
            await self.pusher.start()
        if self.reporter is not None:
            await self.reporter.start()
        if self.access_log is not None and self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every_second())

    async def _flush_every_second(self) -> None:
        assert self.access_log is not None
        while True:
            await asyncio.sleep(1.0)
            self.access_log.flush()

    async def aclose(self) -> None:
        """Push and send what is left (bounded), flush the access log."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        try:
            if self.pusher is not None:
                await self.pusher.aclose()
        finally:
            if self.reporter is not None:
                await self.reporter.aclose()
            if self.access_log is not None:
                self.access_log.flush()

    # -- per request -------------------------------------------------------------------
    #
    # `begin`, `upstream` and `finish` find the request in a context variable;
    # `begin_request`, `upstream_for` and `finish_request` are the same steps
    # for a caller that keeps the `RequestTelemetry` itself and passes it on.

    def begin(self, stream: Stream) -> Token[RequestTelemetry | None]:
        return _CURRENT.set(self.begin_request(stream))

    def begin_request(self, stream: Stream) -> RequestTelemetry:
        """The request's telemetry: its trace context, continued from the
        client's or new (see the module header)."""
        if self.reporter is None:
            return RequestTelemetry()
        headers = stream.head.headers
        foreign = False
        for name, _ in headers:
            if name in _DROPPED:
                parent, b3 = extract_fields(headers)
                if parent is not None:
                    return _continued(parent, b3)
                foreign = True
                break
        # A new trace, as for most requests: one 192-bit draw makes the trace
        # id and the span id (half the calls of `new_trace_id()` +
        # `new_span_id()`), and the sampler is asked only below a rate of 1.
        bits = _getrandbits(192)
        sampler = self.sampler
        flags = _NEW_SAMPLED if sampler.rate >= 1.0 or sampler.sample_new() else RANDOM_TRACE_ID
        if bits >> 64 and bits & _SPAN_ID_BITS:
            text = bits.to_bytes(24).hex()
            return RequestTelemetry(text[:32], text[32:], flags, None, "", "", foreign)
        # An all-zero id is invalid: drawn again (once in 2**64 requests).
        return RequestTelemetry(new_trace_id(), new_span_id(), flags, None, "", "", foreign)

    def upstream(
        self, extra: Headers, drop: frozenset[bytes], service: str, endpoint: Upstream
    ) -> tuple[Headers, frozenset[bytes]]:
        """The header edits for an attempt to `endpoint` of `service`, with
        this request's trace context and the caller added."""
        request = _CURRENT.get()
        if request is None:
            return extra, drop
        return self.upstream_for(request, extra, drop, service, endpoint)

    def upstream_for(
        self,
        request: RequestTelemetry,
        extra: Headers,
        drop: frozenset[bytes],
        service: str,
        endpoint: Upstream,
    ) -> tuple[Headers, frozenset[bytes]]:
        """`upstream` for `request`."""
        retry = request.upstream is not None
        request.service = service
        request.upstream = endpoint
        if retry:
            return extra, drop
        if not request.trace_id:
            return [*extra, self._caller_field], drop | {CALLER}
        parent = f"00-{request.trace_id}-{request.span_id}-{_HEX[request.flags]}"
        traceparent = (b"traceparent", parent.encode())
        if not request.foreign:
            # Nothing of the client's to replace: the route's own removals
            # stay as they are (an empty set lets the engine skip a union).
            if extra:
                return [*extra, self._caller_field, traceparent], drop
            return [self._caller_field, traceparent], drop
        added = [*extra, self._caller_field, traceparent]
        if request.tracestate:
            added.append((b"tracestate", request.tracestate.encode("latin-1")))
        if request.b3 == "single":
            added.append((b"b3", format_b3(request.context()).encode()))
        elif request.b3 == "multi":
            multi = format_b3_multi(request.context())
            added.extend((n.encode(), v.encode()) for n, v in multi.items())
        return added, _DROPPED if not drop else self._dropped(drop)

    def _dropped(self, drop: frozenset[bytes]) -> frozenset[bytes]:
        # A route's own removals plus the trace fields: one set per route, not per request.
        found = self._drops.get(drop)
        if found is None:
            if len(self._drops) >= _CACHE_LIMIT:
                self._drops.clear()
            found = self._drops[drop] = drop | _DROPPED
        return found

    def finish(
        self,
        token: Token[RequestTelemetry | None],
        stream: Stream,
        route: str,
        status: int,
        started: float,
        ended: float,
    ) -> None:
        request = _CURRENT.get()
        _CURRENT.reset(token)
        if request is not None:
            self.finish_request(request, stream, route, status, started, ended)

    def finish_request(
        self,
        request: RequestTelemetry,
        stream: Stream,
        route: str,
        status: int,
        started: float,
        ended: float,
    ) -> None:
        """The request's signals, span and access log line (`started` and
        `ended`: the gateway's own monotonic clock reads)."""
        # The signals and the span are worked out inline: this runs for every
        # request, and a Python call costs as much as what each step does.
        seconds = ended - started
        if seconds < 0.0:
            seconds = 0.0
        head = stream.head
        method = _METHODS.get(head.method) or head.method.decode("latin-1")
        service = request.service
        recorder = self.recorder
        if service and recorder is not None:
            # The recorder's cell for this request, kept here until the
            # recorder's next snapshot: one dictionary look-up and no lock
            # (requests and pushes share the loop's thread).
            if self._cells_generation != recorder.generation:
                self._cells.clear()
                self._cells_generation = recorder.generation
            cell = self._cells.get((service, route, method, status))
            if cell is None:
                cell = self._new_cell(recorder, service, route, method, status)
            cell.counts[bisect_left(BOUNDS, seconds)] += 1  # Cell.add
            cell.sum += seconds
        reporter = self.reporter
        if request.flags & SAMPLED and reporter is not None:
            # Everything but the ids, times and client address repeats from
            # one request of a route to the next: the other tags are encoded
            # once per distinct set, and the client's tag (one per address)
            # is appended. The endpoint is keyed by identity (its dataclass
            # hash is slow) and kept in the entry, so the id is not reused
            # while it lives.
            upstream = request.upstream
            path = head.target
            if b"?" in path:
                path = path.partition(b"?")[0]
            key = (method, route, status, path, head.host, service, id(upstream))
            parts = self._span_parts.get(key)
            if parts is None or parts.upstream is not upstream:
                parts = self._new_span_parts(key, request, method, route, status)
            address = stream.peer.address
            if parts.client != address:
                self._for_client(parts, address)
            reporter.record(
                HttpServerSpan(
                    request.trace_id,
                    request.span_id,
                    request.parent_id,
                    parts.name,
                    "SERVER",
                    int((started + self._wall_offset) * 1_000_000),
                    max(1, int(seconds * 1_000_000)),
                    self._local,
                    parts.tags,
                )
            )
        log = self.access_log
        if log is not None and log.wants(status):
            upstream = request.upstream
            endpoint = self._address(upstream) if upstream is not None else None
            wall = started + self._wall_offset
            log.write(access_entry(stream, request, method, route, status, wall, seconds, endpoint))

    def _new_cell(
        self, recorder: Recorder, service: str, route: str, method: str, status: int
    ) -> Cell:
        if len(self._cells) >= _CACHE_LIMIT:
            self._cells.clear()
        key = (service, route, method, status)
        cell = self._cells[key] = recorder.cell(route, method, status, service=service)
        return cell

    def _new_span_parts(
        self,
        key: _SpanKey,
        request: RequestTelemetry,
        method: str,
        route: str,
        status: int,
    ) -> _SpanParts:
        path, host = key[3], key[4]
        upstream = request.upstream
        tags = HttpServerTags(
            method,
            path.decode("latin-1"),
            route or None,
            _STATUS_TEXT[status] if 0 <= status < 600 else None,
            host.decode("latin-1") if host else None,
            None,  # the client's address: appended per request
            request.service or None,
            self._address(upstream) if upstream is not None else None,
            _ERROR_TAG[status] if 0 <= status < 600 else error_tag(status, None),
        )
        # The tags always hold the method and the path, so the object is not
        # empty and the client's tag follows a comma.
        parts = _SpanParts(
            msgspec.json.encode(tags)[:-1], span_name(method, route or None), upstream
        )
        if len(path) + (len(host) if host else 0) <= _CACHED_TAG_BYTES:
            if len(self._span_parts) >= _CACHE_LIMIT:
                self._span_parts.clear()
            self._span_parts[key] = parts
        return parts

    def _for_client(self, parts: _SpanParts, address: str) -> None:
        # The end of the tags, the client's address and the closing brace,
        # is encoded once per address.
        tail = self._client_tags.get(address)
        if tail is None:
            tail = b',"client.address":' + msgspec.json.encode(address) + b"}"
            if len(address) <= _CACHED_TAG_BYTES:
                if len(self._client_tags) >= _CACHE_LIMIT:
                    self._client_tags.clear()
                self._client_tags[address] = tail
        head = memoryview(parts.tags)[: parts.head_length]
        parts.tags = msgspec.Raw(b"".join((head, tail)))
        parts.client = address

    def _address(self, upstream: Upstream) -> str:
        key = (upstream.address, upstream.port)
        found = self._addresses.get(key)
        if found is None:
            if len(self._addresses) >= _CACHE_LIMIT:
                self._addresses.clear()
            found = self._addresses[key] = f"{upstream.address}:{upstream.port}"
        return found


# -- building it for a gateway process ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetrySettings:
    """What `crossway gateway` says about telemetry."""

    control_plane: str | None = None
    token: str | None = None
    enabled: bool = True
    """Golden signals and spans to the control plane (needs `control_plane`)."""
    stats_interval: float = 10.0
    trace_sample_rate: float = 1.0
    access_log: AccessLogMode = _NO_ACCESS_LOG
    instance: str = ""

    def __post_init__(self) -> None:
        if not 1.0 <= self.stats_interval <= 60.0:
            raise InvalidArgument(
                "stats_interval must be between 1s and 60s", field="stats_interval"
            )
        if not 0.0 <= self.trace_sample_rate <= 1.0:
            raise InvalidArgument(
                "trace_sample_rate must be between 0 and 1", field="trace_sample_rate"
            )


def build_telemetry(settings: TelemetrySettings, *, clock: Clock) -> GatewayTelemetry | None:
    """The gateway's telemetry for `settings`; None when there is nothing to do."""
    to_control_plane = settings.enabled and settings.control_plane is not None
    access_log = AccessLog(settings.access_log) if settings.access_log.enabled else None
    if not to_control_plane and access_log is None:
        return None
    recorder = pusher = reporter = None
    if to_control_plane:
        assert settings.control_plane is not None
        recorder = Recorder(GATEWAY, instance=settings.instance, side="client")
        pusher = StatsPusher(
            recorder, settings.control_plane, interval=settings.stats_interval, token=settings.token
        )
        # A gateway sends far more spans than a service: each post costs about
        # a millisecond of CPU whatever its size, so batches are larger (still
        # sent every second) and the buffer holds two seconds at 10k rps.
        reporter = SpanReporter(
            settings.control_plane,
            token=settings.token,
            batch_size=GATEWAY_BATCH,
            capacity=GATEWAY_BUFFER,
        )
    return GatewayTelemetry(
        clock=clock,
        recorder=recorder,
        pusher=pusher,
        reporter=reporter,
        sampler=Sampler(settings.trace_sample_rate),
        access_log=access_log,
    )


def instance_name() -> str:
    """`gateway-<host>-<pid>`: which gateway process pushed (one per worker)."""
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return f"{GATEWAY}-{host.strip('-._') or 'host'}-{os.getpid()}"[:128]
