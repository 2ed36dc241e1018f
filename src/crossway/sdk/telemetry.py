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
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx2

from crossway.sdk.settings import ClientSettings
from crossway.telemetry.signals.recorder import Recorder, StatsPusher
from crossway.telemetry.tracecontext import (
    RANDOM_TRACE_ID,
    SAMPLED,
    TraceContext,
    new_trace_id,
)
from crossway.telemetry.traces.model import Endpoint
from crossway.telemetry.traces.reporter import SpanReporter
from crossway.telemetry.traces.spans import Sampler, client_span, server_span

CALLER_HEADER = "X-Crossway-Caller"
ROUTE_EXTENSION = "crossway.route"
"""A request extension naming the callee's route template for client-side
signals (`http.get(url, extensions={"crossway.route": "/items/{id}"})`)."""
ANY_ROUTE = "*"
"""The route of client-side signals when the caller does not name the template."""

TraceParts = tuple[str, str]
"""(prefix, suffix) of the `traceparent` of a request: prefix + span id + suffix."""


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
        self.reporter = SpanReporter(settings.url, timeout=settings.timeout, client=http)

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

    def trace_parts(self, parent: TraceContext | None) -> tuple[TraceParts, str | None, bool]:
        """(traceparent parts, parent span id, sampled) for a call made under
        `parent` (a new trace, sampled by the rate, when None)."""
        if parent is None:
            flags = RANDOM_TRACE_ID | (SAMPLED if self.sampler.sample_new() else 0)
            return (f"00-{new_trace_id()}-", f"-{flags:02x}"), None, bool(flags & SAMPLED)
        flags = parent.flags & (SAMPLED | RANDOM_TRACE_ID)
        parts = (f"00-{parent.trace_id}-", f"-{flags:02x}")
        return parts, parent.span_id, parent.sampled

    def attempted(
        self,
        *,
        peer_service: str,
        request: Any,
        url: Any,
        status: int,
        start_us: int,
        seconds: float,
        attempt: int,
        trace: TraceParts | None,
        span_id: str | None,
        parent_id: str | None,
        sampled: bool,
        address: str,
        error: BaseException | None,
    ) -> None:
        """One attempt of a call to `peer_service` (`status` 0: no answer)."""
        method = request.method
        route = request.extensions.get(ROUTE_EXTENSION) or ANY_ROUTE
        self.client.record(route, method, status, seconds, service=peer_service)
        if not sampled or trace is None or span_id is None:
            return
        span = client_span(
            trace_id=trace[0][3:35],
            span_id=span_id,
            parent_id=parent_id,
            local=self.local,
            peer_service=peer_service,
            method=method,
            url=str(url),
            status=status,
            start_us=start_us,
            duration_us=int(seconds * 1_000_000),
            attempt=attempt,
            server_address=address,
            error=error,
        )
        self.reporter.record(span)


def wall_micros(perf_started: float) -> int:
    """The wall-clock time (µs) of a `time.perf_counter()` reading taken just now-ish."""
    return time.time_ns() // 1000 - int((time.perf_counter() - perf_started) * 1_000_000)
