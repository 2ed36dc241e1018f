"""What a service's requests tell the control plane: golden signals and spans.

Theory of operation
- A `Client` with a service name and `telemetry` on (the default) owns one
  `ServiceTelemetry`: two `Recorder`s — the server side, fed by
  `CrosswayMiddleware` (requests to this service, the caller taken from the
  `X-Crossway-Caller` header the SDK transport and the gateway send), and the
  client side, fed by the transport (requests to other services, this
  service as the caller) — one `StatsPusher` for both, and one
  `SpanReporter`.
- Both senders reuse the client's control-plane HTTP client (its base URL,
  token and connection pool). Nothing starts at construction (a pre-fork
  server may fork afterwards); `start()` runs from `Client.start()`,
  `stop()` from `Client.stop()`, which sends what is left within a bound.
- The request path only appends: a cell update under a short lock for the
  signals, a deque append for a span. Neither raises into the application;
  a dead control plane costs dropped, counted data and one log line per
  outage (crossway.telemetry.outage).
- Sampling is `Sampler(settings.trace_sample_rate)`: the caller's decision
  when a request carries one, the rate for a trace that starts here.
- The client side runs once per attempt, so it is kept lean: positional
  arguments, a new trace's id and first span id from one random draw, the
  span's wall-clock start derived from the attempt's one `perf_counter()`
  reading (the offset between the two clocks is read again every
  `_CLOCK_REFRESH_S`), and the strings a span repeats (peer endpoint, status
  text) made once. On the loop's thread (where the pusher takes its
  snapshots) an attempt counts straight into a cell of the recorder's, kept
  until its next snapshot and written by that thread alone, without a lock
  (`Recorder.cell`); other threads, a blocking client's workers, go through
  `Recorder.record` and its lock, which count into other cells: no cell is
  written both with and without the lock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx2

from crossway.sdk.settings import ClientSettings
from crossway.telemetry.signals.recorder import Cell, Recorder, StatsPusher
from crossway.telemetry.tracecontext import (
    RANDOM_TRACE_ID,
    SAMPLED,
    TraceContext,
)
from crossway.telemetry.traces.model import Annotation, Endpoint, Span
from crossway.telemetry.traces.reporter import SpanReporter
from crossway.telemetry.traces.spans import (
    ERROR,
    METHOD,
    PEER_SERVICE,
    RESEND_COUNT,
    SERVER_ADDRESS,
    STATUS,
    URL,
    Sampler,
    error_tag,
    server_span,
)

CALLER_HEADER = "X-Crossway-Caller"
ROUTE_EXTENSION = "crossway.route"
"""A request extension naming the callee's route template for client-side
signals (`http.get(url, extensions={"crossway.route": "/items/{id}"})`)."""
ANY_ROUTE = "*"
"""The route of client-side signals when the caller does not name the template."""

TraceParts = tuple[str, str]
"""(prefix, suffix) of the `traceparent` of a request: prefix + span id + suffix."""

SPAN_BATCH = 1000
_CLOCK_REFRESH_S = 10.0
_NEW_FLAGS = (f"-{RANDOM_TRACE_ID:02x}", f"-{RANDOM_TRACE_ID | SAMPLED:02x}")
_getrandbits = random.getrandbits
# Every client span shares this one empty list: a list is always tracked by
# the garbage collector, and one new list per buffered span (up to a batch of
# 1,000 waiting for the next POST) made them survivors that triggered full
# collections, ~2-4 µs per call on average. Nothing appends to a span's
# annotations after it is recorded; the reporter only encodes it.
_NO_ANNOTATIONS: list[Annotation] = []
_MAX_KEPT_CELLS = 1024


class ServiceTelemetry:
    """One service's golden-signal recorders, pusher and span reporter."""

    def __init__(self, settings: ClientSettings, *, http: httpx2.AsyncClient | None) -> None:
        if settings.service is None:
            raise ValueError("telemetry needs the service's name")
        self.service = service = settings.service
        self.server = Recorder(service, side="server")
        self.client = Recorder(service, side="client")
        self.sampler = Sampler(settings.trace_sample_rate)
        self.local = Endpoint(service_name=service)
        self.caller_header = service
        self.pusher = StatsPusher(
            [self.server, self.client],
            settings.url,
            interval=settings.stats_interval,
            timeout=settings.timeout,
            client=http,
        )
        # One POST per 1,000 spans, not per 100: a busy caller records a span
        # per attempt, and a POST costs what encoding a few hundred spans does.
        self.reporter = SpanReporter(
            settings.url, timeout=settings.timeout, client=http, batch_size=SPAN_BATCH
        )
        self._peers: dict[str, Endpoint] = {}
        self._statuses: dict[int, str] = {}
        self._wall_offset_us = 0  # wall-clock µs minus perf_counter() µs
        self._offset_taken = -_CLOCK_REFRESH_S  # perf_counter() when it was read
        self._loop_thread = 0  # the thread of the loop the pusher snapshots on
        # (peer service, route, method, status) -> the client recorder's cell,
        # valid while its generation is `_cells_generation`
        self._cells: dict[tuple[str, str, str, int], Cell] = {}
        self._cells_generation = -1

    @classmethod
    def for_settings(
        cls, settings: ClientSettings, *, http: httpx2.AsyncClient | None
    ) -> ServiceTelemetry | None:
        """The telemetry of a client with these settings; None when it is off
        (`telemetry=False`) or the service has no name to report under."""
        if not settings.telemetry or settings.service is None:
            return None
        return cls(settings, http=http)

    async def start(self, instance_id: str) -> None:
        self.server.instance = self.client.instance = instance_id
        self._loop_thread = threading.get_ident()
        await self.pusher.start()
        await self.reporter.start()

    async def stop(self) -> None:
        """Push and send what is left (each bounded by the client's timeout)."""
        try:
            await self.pusher.aclose()
        finally:
            await self.reporter.aclose()

    # -- the server side (CrosswayMiddleware) ----------------------------------------

    def served(
        self,
        *,
        ctx: TraceContext,
        headers: Mapping[str, str],
        method: str,
        path: str,
        route: str,
        status: int,
        start_us: int,
        seconds: float,
        error: BaseException | None,
    ) -> None:
        """One request this service answered (`status` 0: none was sent)."""
        self.server.record(route, method, status, seconds, caller=headers.get("x-crossway-caller"))
        if ctx.sampled:
            span = server_span(
                ctx,
                local=self.local,
                method=method,
                path=path,
                route=route,
                status=status,
                start_us=start_us,
                duration_us=int(seconds * 1_000_000),
                server_address=headers.get("host"),
                error=error,
            )
            self.reporter.record(span)

    # -- the client side (the transport) ---------------------------------------------

    def trace_parts(
        self, parent: TraceContext | None
    ) -> tuple[TraceParts, str | None, bool, str | None]:
        """(traceparent parts, parent span id, sampled, first span id) for a
        call made under `parent`; the first span id is drawn with a new
        trace's id (None under a parent: the caller draws it)."""
        if parent is None:
            sampled = self.sampler.sample_new()
            parts, first_span_id = new_trace_parts(sampled)
            return parts, None, sampled, first_span_id
        flags = parent.flags & (SAMPLED | RANDOM_TRACE_ID)
        parts = (f"00-{parent.trace_id}-", f"-{flags:02x}")
        return parts, parent.span_id, parent.sampled, None

    def attempted(
        self,
        peer_service: str,
        method: str,
        route: str | None,
        status: int,
        began: float,
        ended: float,
        sampled: bool,
        span: tuple[Any, ...] | None,
    ) -> None:
        """One attempt of a call to `peer_service`, sent at `perf_counter()`
        `began`, over at `ended` (`status` 0: no answer). `span`, when the
        attempt is sampled: (trace parts, span id, parent id, URL text,
        attempt number, server address, error)."""
        seconds = ended - began
        if threading.get_ident() == self._loop_thread:
            self._count(peer_service, route or ANY_ROUTE, method, status, seconds)
        else:
            self.client.record(route or ANY_ROUTE, method, status, seconds, service=peer_service)
        if not sampled or span is None:
            return
        trace, span_id, parent_id, url, attempt, address, error = span
        if ended - self._offset_taken > _CLOCK_REFRESH_S:
            self._offset_taken = ended
            self._wall_offset_us = time.time_ns() // 1000 - int(ended * 1_000_000)
        tags = {METHOD: method, URL: url, PEER_SERVICE: peer_service}
        if status:
            tags[STATUS] = self._status_text(status)
        if attempt > 1:
            tags[RESEND_COUNT] = str(attempt - 1)
        tags[SERVER_ADDRESS] = address
        if error is not None or status >= 500 or status == 0:
            failure = error_tag(status, error)
            if failure is not None:
                tags[ERROR] = failure
        peer = self._peers.get(peer_service)
        if peer is None:
            peer = self._peers[peer_service] = Endpoint(service_name=peer_service)
        duration_us = int(seconds * 1_000_000)
        self.reporter.record(
            Span(
                trace[0][3:35],
                span_id,
                parent_id,
                method,
                "CLIENT",
                self._wall_offset_us + int(began * 1_000_000),
                duration_us if duration_us > 0 else 1,
                None,
                None,
                self.local,
                peer,
                _NO_ANNOTATIONS,
                tags,
            )
        )

    def _count(
        self, peer_service: str, route: str, method: str, status: int, seconds: float
    ) -> None:
        # Only on the loop's thread, the kept cells' one writer, which also
        # takes the snapshots: none runs between the generation check and
        # the add, so no count lands in a retired cell.
        recorder = self.client
        cells = self._cells
        if recorder.generation != self._cells_generation or len(cells) >= _MAX_KEPT_CELLS:
            cells.clear()
            self._cells_generation = recorder.generation
        key = (peer_service, route, method, status)
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = recorder.cell(route, method, status, service=peer_service)
        cell.add(seconds if seconds > 0.0 else 0.0)

    def _status_text(self, status: int) -> str:
        text = self._statuses.get(status)
        if text is None:
            text = self._statuses[status] = str(status)
        return text


def new_trace_parts(sampled: bool) -> tuple[TraceParts, str]:
    """(traceparent parts, first span id) of a new trace: the trace id and
    the first span id come from one random draw."""
    ids = f"{_random_ids():048x}"
    return (f"00-{ids[:32]}-", _NEW_FLAGS[sampled]), ids[32:]


def _random_ids() -> int:
    """192 random bits for a trace id and a span id, neither all zeros."""
    while True:
        value = _getrandbits(192)
        if value >> 64 and value & 0xFFFFFFFFFFFFFFFF:
            return value


def wall_micros(perf_started: float) -> int:
    """The wall-clock time (µs) of a `time.perf_counter()` reading taken just now-ish."""
    return time.time_ns() // 1000 - int((time.perf_counter() - perf_started) * 1_000_000)
