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
# The hot path stays cheap: the gateway's own two clock reads are reused (a
# span's wall-clock start is the monotonic start plus an offset taken once),
# the recorder's cells are keyed by small tuples of strings already at hand,
# and with the access log off nothing is formatted per request. The
# recorder is pushed by a `StatsPusher`, the spans sent by a `SpanReporter`
# (crossway.telemetry), both owned here and started after fork.
#
# Access log: JSON lines on stdout (see docs/gateway.md for the fields);
# `off`, `full`, or `sample:R` — every 5xx or unanswered request, and a
# share R of the others.
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
import sys
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

import msgspec

from crossway.balance import Endpoint as Upstream
from crossway.core.clock import Clock
from crossway.core.errors import InvalidArgument
from crossway.proxy.headers import Headers
from crossway.proxy.stream import Stream
from crossway.telemetry.signals.recorder import Recorder, StatsPusher
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
_STATUS_TEXT = [str(status) for status in range(600)]
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def _new_ids() -> tuple[str, str]:
    """A new trace id and span id from one 192-bit draw (the request path's
    share of `new_trace_id()` + `new_span_id()`, at half the calls)."""
    text = random.getrandbits(192).to_bytes(24).hex()
    trace_id, span_id = text[:32], text[32:]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return new_trace_id(), new_span_id()
    return trace_id, span_id


class RequestTelemetry:
    """What the gateway's telemetry knows about one request.

    The gateway span's ids are kept as plain fields rather than a
    `TraceContext`: this object is made for every request, and a frozen
    dataclass costs a microsecond to build."""

    __slots__ = (
        "b3",
        "flags",
        "injected",
        "parent_id",
        "service",
        "span_id",
        "trace_id",
        "tracestate",
        "upstream",
    )

    def __init__(self) -> None:
        self.trace_id = ""  # "" with tracing off
        self.span_id = ""  # the gateway span's id
        self.parent_id: str | None = None  # the client's span, if it sent one
        self.flags = 0
        self.tracestate = ""
        self.b3 = ""  # "", "single" or "multi": the form the client sent
        self.service = ""  # the backend service, once chosen
        self.upstream: Upstream | None = None
        self.injected = False  # the edits of a retry already carry the headers

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def context(self) -> TraceContext:
        """The gateway span's context as a value (for the B3 formats)."""
        state = parse_tracestate(self.tracestate) if self.tracestate else ()
        return TraceContext(self.trace_id, self.span_id, self.flags, state or (), self.parent_id)


_CURRENT: ContextVar[RequestTelemetry | None] = ContextVar("crossway_gateway_request", default=None)


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


# -- access log ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccessLogMode:
    """`off`, `full` or `sample:R` (0 < R ≤ 1)."""

    rate: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.rate > 0.0


def parse_access_log(text: str) -> AccessLogMode:
    """`off` | `full` | `sample:0.1`; `InvalidArgument` naming `access_log` otherwise."""
    value = text.strip().lower()
    if value in ("off", "none", ""):
        return AccessLogMode(0.0)
    if value in ("full", "on", "all"):
        return AccessLogMode(1.0)
    kind, _, rate = value.partition(":")
    try:
        share = float(rate)
    except ValueError:
        share = -1.0
    if kind != "sample" or not 0.0 < share <= 1.0:
        raise InvalidArgument(
            f"access_log: {text!r} must be off, full or sample:R with 0 < R <= 1",
            field="access_log",
        )
    return AccessLogMode(share)


class AccessLog:
    """JSON lines, one per logged request, written to a binary stream."""

    def __init__(
        self,
        mode: AccessLogMode,
        *,
        sink: IO[bytes] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.mode = mode
        self.lines = 0
        self._sink = sink if sink is not None else sys.stdout.buffer
        self._rand = rand
        self._encode = msgspec.json.Encoder().encode

    def wants(self, status: int) -> bool:
        rate = self.mode.rate
        return rate >= 1.0 or status >= 500 or status == 0 or self._rand() < rate

    def write(self, entry: dict[str, object]) -> None:
        try:
            self._sink.write(self._encode(entry) + b"\n")
            self.lines += 1
        except (OSError, ValueError):
            pass  # a closed or broken stdout must not fail requests

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._sink.flush()


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
        self._local = Endpoint(service_name=name)
        # Spans need wall-clock times; the gateway reads a monotonic clock.
        self._wall_offset = clock.wall() - clock.now()
        self._flusher: asyncio.Task[None] | None = None
        self._drops: dict[frozenset[bytes], frozenset[bytes]] = {}
        self._addresses: dict[tuple[str, int], str] = {}
        self._names: dict[tuple[str, str], str] = {}

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

    def begin(self, stream: Stream) -> Token[RequestTelemetry | None]:
        request = RequestTelemetry()
        if self.reporter is not None:
            parent, request.b3 = extract_fields(stream.head.headers)
            if parent is None:
                request.trace_id, request.span_id = _new_ids()
                sampled = self.sampler.sample_new()
                request.flags = RANDOM_TRACE_ID | SAMPLED if sampled else RANDOM_TRACE_ID
            else:
                request.span_id = new_span_id()
                request.trace_id = parent.trace_id
                request.parent_id = parent.span_id
                request.flags = parent.flags & (SAMPLED | RANDOM_TRACE_ID)
                request.tracestate = format_tracestate(parent.tracestate)
        return _CURRENT.set(request)

    def upstream(
        self, extra: Headers, drop: frozenset[bytes], service: str, endpoint: Upstream
    ) -> tuple[Headers, frozenset[bytes]]:
        """The header edits for an attempt to `endpoint` of `service`, with
        this request's trace context and the caller added."""
        request = _CURRENT.get()
        if request is None:
            return extra, drop
        request.service = service
        request.upstream = endpoint
        if request.injected:
            return extra, drop
        request.injected = True
        added = [*extra, (CALLER, self._caller)]
        if not request.trace_id:
            return added, drop | {CALLER}
        dropped = _DROPPED if not drop else self._dropped(drop)
        parent = f"00-{request.trace_id}-{request.span_id}-{_HEX[request.flags]}"
        added.append((b"traceparent", parent.encode()))
        if request.tracestate:
            added.append((b"tracestate", request.tracestate.encode("latin-1")))
        if request.b3 == "single":
            added.append((b"b3", format_b3(request.context()).encode()))
        elif request.b3 == "multi":
            multi = format_b3_multi(request.context())
            added.extend((n.encode(), v.encode()) for n, v in multi.items())
        return added, dropped

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
        if request is None:
            return
        seconds = ended - started
        method = stream.head.method.decode("latin-1")
        if self.recorder is not None and request.service:
            self.recorder.record(route, method, status, seconds, service=request.service)
        if request.flags & SAMPLED and self.reporter is not None:
            self._span(request, stream, method, route, status, started, seconds)
        log = self.access_log
        if log is not None and log.wants(status):
            log.write(self._entry(request, stream, method, route, status, started, seconds))

    def _span(
        self,
        request: RequestTelemetry,
        stream: Stream,
        method: str,
        route: str,
        status: int,
        started: float,
        seconds: float,
    ) -> None:
        assert self.reporter is not None
        head = stream.head
        upstream = request.upstream
        tags = HttpServerTags(
            method,
            head.target.partition(b"?")[0].decode("latin-1"),
            route or None,
            _STATUS_TEXT[status] if 0 < status < 600 else None,
            head.host.decode("latin-1") if head.host else None,
            stream.peer.address,
            request.service or None,
            self._address(upstream) if upstream is not None else None,
            error_tag(status, None),
        )
        span = HttpServerSpan(
            request.trace_id,
            request.span_id,
            request.parent_id,
            self._name(method, route),
            "SERVER",
            int((started + self._wall_offset) * 1_000_000),
            max(1, int(seconds * 1_000_000)),
            self._local,
            tags,
        )
        self.reporter.record(span)

    def _name(self, method: str, route: str) -> str:
        key = (method, route)
        found = self._names.get(key)
        if found is None:
            if len(self._names) >= _CACHE_LIMIT:
                self._names.clear()
            found = self._names[key] = span_name(method, route or None)
        return found

    def _address(self, upstream: Upstream) -> str:
        key = (upstream.address, upstream.port)
        found = self._addresses.get(key)
        if found is None:
            if len(self._addresses) >= _CACHE_LIMIT:
                self._addresses.clear()
            found = self._addresses[key] = f"{upstream.address}:{upstream.port}"
        return found

    def _entry(
        self,
        request: RequestTelemetry,
        stream: Stream,
        method: str,
        route: str,
        status: int,
        started: float,
        seconds: float,
    ) -> dict[str, object]:
        head = stream.head
        upstream = request.upstream
        when = datetime.fromtimestamp(started + self._wall_offset, UTC)
        return {
            "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "client": stream.peer.address,
            "method": method,
            "host": head.host.decode("latin-1") if head.host else None,
            "path": head.target.decode("latin-1"),
            "route": route or None,
            "service": request.service or None,
            "upstream": self._address(upstream) if upstream is not None else None,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "trace_id": request.trace_id or None,
            "span_id": request.span_id or None,
            "user_agent": _header(head.headers, b"user-agent"),
        }


def _header(headers: Headers, name: bytes) -> str | None:
    for field_name, value in headers:
        if field_name == name:
            return value.decode("latin-1")
    return None


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
    access_log: AccessLogMode = AccessLogMode()
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
