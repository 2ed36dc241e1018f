"""HTTP API of the trace store: Zipkin v2 and OTLP/HTTP ingest, Zipkin v2 queries.

    POST /api/v2/spans                      Zipkin v2 JSON array (gzip allowed) → 202
    POST /v1/traces                         OTLP/HTTP, JSON or protobuf (gzip allowed) → 200
    GET  /api/v2/services                   local service names
    GET  /api/v2/remoteServices?serviceName=   remote services called by one
    GET  /api/v2/spans?serviceName=         span names of one service
    GET  /api/v2/traces?serviceName=&remoteServiceName=&spanName=&annotationQuery=
                        &minDuration=&maxDuration=&endTs=&lookback=&limit=
    GET  /api/v2/trace/{traceId}            one trace; 404 when unknown
    GET  /api/v2/traceMany?traceIds=a,b     the stored ones among those
    GET  /api/v2/dependencies?endTs=&lookback=   service links
    GET  /api/v2/autocompleteKeys, /api/v2/autocompleteValues?key=   always []

These are Zipkin's own paths and semantics (see crossway.telemetry.traces.query),
so Zipkin's UI, its clients and every Zipkin reporter work against the control
plane unchanged; OpenTelemetry exporters point at `/v1/traces`.

Theory of operation
- `routes(ctx)` builds one `TraceStore` (settings from `CROSSWAY_TRACES_*`,
  see traces/settings.py) and, when forwarding is configured, one
  `Forwarder`, started with the server and flushed when it stops.
- Ingest decodes the whole body before storing anything: a bad span makes
  the request a 400 and stores none of it. Bodies are bounded before and
  after gzip, so a small compressed body cannot expand without limit.
- The store is pure and lives on the event loop; handlers call it directly.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.core.errors import CrosswayError, InvalidArgument, NotFound
from crossway.server.context import ServerContext
from crossway.server.http import PayloadTooLarge, json_response
from crossway.telemetry.traces import _otlp_proto, otlp, zipkin
from crossway.telemetry.traces.forward import Forwarder
from crossway.telemetry.traces.model import Span, normalize_trace_id
from crossway.telemetry.traces.query import (
    dependency_links,
    find_traces,
    in_window,
    name_param,
    parse_query,
)
from crossway.telemetry.traces.settings import TraceSettings
from crossway.telemetry.traces.store import TraceStore


class UnsupportedMediaType(CrosswayError):
    code = "unsupported_media_type"
    status = 415


def routes(ctx: ServerContext) -> list[BaseRoute]:
    settings = TraceSettings.from_env(os.environ)
    store = TraceStore(clock=ctx.clock, policy=settings.policy)
    forwarder = Forwarder(settings.forward) if settings.forward is not None else None
    api = TracesApi(store, forwarder=forwarder, max_body=settings.max_body_bytes)
    ctx.provide(store)
    ctx.registry.register(TraceMetrics(store, forwarder))
    if forwarder is not None:
        ctx.provide(forwarder)
        ctx.on_start(forwarder.start)
        ctx.on_close(forwarder.close)
    return api.routes()


class TracesApi:
    def __init__(
        self, store: TraceStore, *, forwarder: Forwarder | None = None, max_body: int
    ) -> None:
        self.store = store
        self.forwarder = forwarder
        self.max_body = max_body

    def routes(self) -> list[BaseRoute]:
        v2 = "/api/v2"
        return [
            Route(f"{v2}/spans", self.post_zipkin, methods=["POST"]),
            Route("/v1/traces", self.post_otlp, methods=["POST"]),
            Route(f"{v2}/services", self.services, methods=["GET"]),
            Route(f"{v2}/remoteServices", self.remote_services, methods=["GET"]),
            Route(f"{v2}/spans", self.span_names, methods=["GET"]),
            Route(f"{v2}/traces", self.traces, methods=["GET"]),
            Route(f"{v2}/trace/{{traceId}}", self.trace, methods=["GET"]),
            Route(f"{v2}/traceMany", self.trace_many, methods=["GET"]),
            Route(f"{v2}/dependencies", self.dependencies, methods=["GET"]),
            Route(f"{v2}/autocompleteKeys", self.nothing, methods=["GET"]),
            Route(f"{v2}/autocompleteValues", self.nothing, methods=["GET"]),
        ]

    # Ingest.

    def ingest(self, spans: list[Span]) -> None:
        self.store.add(spans)
        if self.forwarder is not None:
            self.forwarder.offer(spans)

    async def post_zipkin(self, request: Request) -> Response:
        media = _media_type(request)
        if media not in ("", "application/json", "text/plain"):
            raise UnsupportedMediaType(
                f"spans must be Zipkin v2 JSON (Content-Type: application/json), not {media}"
            )
        self.ingest(zipkin.decode_spans(await self._body(request)))
        return Response(status_code=202)

    async def post_otlp(self, request: Request) -> Response:
        media = _media_type(request)
        if media == otlp.JSON_CONTENT_TYPE:
            self.ingest(otlp.decode_json(await self._body(request)))
            return json_response({})
        if media == otlp.PROTOBUF_CONTENT_TYPE and _otlp_proto.available():
            self.ingest(_otlp_proto.decode(await self._body(request)))
            return Response(_otlp_proto.response_body(), media_type=otlp.PROTOBUF_CONTENT_TYPE)
        accepted = "application/json or application/x-protobuf"
        if not _otlp_proto.available():
            accepted = "application/json (protobuf needs the opentelemetry-proto package)"
        raise UnsupportedMediaType(f"OTLP traces must be sent as {accepted}, not {media or '?'}")

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            raise self._too_large()
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
        return self._decoded(b"".join(chunks), request.headers.get("content-encoding", ""))

    def _decoded(self, body: bytes, encoding: str) -> bytes:
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            return body
        if encoding != "gzip":
            raise UnsupportedMediaType(f"Content-Encoding {encoding} is not supported; use gzip")
        inflater = zlib.decompressobj(wbits=31)
        try:
            plain = inflater.decompress(body, self.max_body)
        except zlib.error:
            raise InvalidArgument("the body is not valid gzip", field="$") from None
        if inflater.unconsumed_tail:
            raise self._too_large()
        return plain

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"a span batch may hold at most {self.max_body} bytes")

    # Queries.

    async def services(self, request: Request) -> Response:
        return json_response(self.store.services())

    async def remote_services(self, request: Request) -> Response:
        return json_response(self.store.remote_services(_service(request)))

    async def span_names(self, request: Request) -> Response:
        return json_response(self.store.span_names(_service(request)))

    async def traces(self, request: Request) -> Response:
        query = parse_query(request.query_params, now_ms=_now_ms())
        self.store.sweep()
        return _raw_json(zipkin.encode_traces(find_traces(self.store.traces(), query)))

    async def trace(self, request: Request) -> Response:
        trace_id = _trace_id(request.path_params["traceId"], "traceId")
        self.store.sweep()
        spans = self.store.get(trace_id)
        if spans is None:
            raise NotFound(f"trace {trace_id} is not stored (unknown, sampled out or evicted)")
        return _raw_json(zipkin.encode_spans(spans))

    async def trace_many(self, request: Request) -> Response:
        text = request.query_params.get("traceIds", "")
        ids = [_trace_id(part, "traceIds") for part in text.split(",") if part.strip()]
        if not ids:
            raise InvalidArgument("traceIds must list at least one trace id", field="traceIds")
        self.store.sweep()
        found = [spans for spans in map(self.store.get, dict.fromkeys(ids)) if spans]
        return _raw_json(zipkin.encode_traces(found))

    async def dependencies(self, request: Request) -> Response:
        query = parse_query(_only(request.query_params, "endTs", "lookback"), now_ms=_now_ms())
        window = [
            trace.spans
            for trace in self.store.traces()
            if in_window(trace, end_ts=query.end_ts, lookback=query.lookback)
        ]
        return json_response(dependency_links(window))

    async def nothing(self, request: Request) -> Response:
        return json_response([])


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _service(request: Request) -> str:
    service = name_param(request.query_params, "serviceName")
    if service is None:
        raise InvalidArgument("serviceName is required", field="serviceName")
    return service


def _trace_id(text: str, field: str) -> str:
    try:
        return normalize_trace_id(text.strip())
    except ValueError as exc:
        raise InvalidArgument(str(exc), field=field) from None


def _only(params: Mapping[str, str], *names: str) -> dict[str, str]:
    return {name: params[name] for name in names if name in params}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _raw_json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


class TraceMetrics(Collector):
    """The trace store's size and the fate of spans, read at scrape time."""

    def __init__(self, store: TraceStore, forwarder: Forwarder | None) -> None:
        self._store = store
        self._forwarder = forwarder

    def collect(self) -> Iterable[Metric]:
        store, stats = self._store, self._store.stats
        yield GaugeMetricFamily(
            "crossway_trace_store_spans", "Spans held by the trace store", value=store.span_count
        )
        yield GaugeMetricFamily(
            "crossway_trace_store_bytes",
            "Estimated memory held by stored spans",
            value=store.byte_count,
        )
        traces = GaugeMetricFamily(
            "crossway_trace_store_traces", "Stored traces by tail-sampling state", labels=["state"]
        )
        for verdict, count in store.class_sizes().items():
            traces.add_metric([verdict.value], count)
        yield traces
        spans = CounterMetricFamily(
            "crossway_trace_spans", "Spans received, by what became of them", labels=["outcome"]
        )
        spans.add_metric(["stored"], stats.spans_accepted)
        spans.add_metric(["dropped"], stats.spans_dropped)
        spans.add_metric(["evicted"], stats.spans_evicted)
        yield spans
        decided = CounterMetricFamily(
            "crossway_trace_traces", "Traces completed, by the store's decision", labels=["outcome"]
        )
        decided.add_metric(["sampled_out"], stats.traces_sampled_out)
        decided.add_metric(["evicted"], stats.traces_evicted)
        decided.add_metric(["completed"], stats.traces_completed)
        yield decided
        yield from self._forwarding()

    def _forwarding(self) -> Iterable[Metric]:
        if self._forwarder is None:
            return
        stats = self._forwarder.stats
        spans = CounterMetricFamily(
            "crossway_trace_forward_spans",
            "Spans sent on to the external collector, or given up",
            labels=["outcome"],
        )
        spans.add_metric(["forwarded"], stats.forwarded)
        spans.add_metric(["dropped"], stats.dropped)
        yield spans
        yield CounterMetricFamily(
            "crossway_trace_forward_retries", "Batches sent again", value=stats.retries
        )
