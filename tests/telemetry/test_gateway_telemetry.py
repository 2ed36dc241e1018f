"""The gateway's telemetry: trace propagation upstream, its SERVER span,
client-side golden signals and access logs, on a real gateway on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import cast

import httpx2
import pytest

from crossway.balance import Endpoint
from crossway.core.clock import SystemClock
from crossway.core.errors import InvalidArgument
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.headers import Peer
from crossway.proxy.http1 import RequestHead
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import decode_route
from crossway.proxy.server import ProxyServer
from crossway.proxy.stream import Stream
from crossway.proxy.telemetry import (
    AccessLog,
    AccessLogMode,
    GatewayTelemetry,
    TelemetrySettings,
    build_telemetry,
    extract_fields,
    parse_access_log,
)
from crossway.proxy.upstream import UpstreamPool
from crossway.telemetry.signals.recorder import Recorder
from crossway.telemetry.tracecontext import parse_traceparent
from crossway.telemetry.traces.model import Span
from crossway.telemetry.traces.reporter import SpanReporter
from crossway.telemetry.traces.spans import Sampler
from crossway.telemetry.traces.zipkin import decode_spans

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
ROUTE = {"match": {"path_prefix": "/shop"}, "backends": [{"service": "shop"}]}
SHOP_1 = Endpoint("shop-1", "127.0.0.1", 9)


@dataclass
class Upstream:
    """A loopback upstream that answers 200 (or ?status=N) and keeps each head."""

    port: int = 0
    heads: list[dict[str, str]] = field(default_factory=list)
    fields: list[list[str]] = field(default_factory=list)
    """Each head's field names in order, repeats kept."""


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[Upstream]:
    found = Upstream()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                lines = raw.decode("latin-1").split("\r\n")
                found.heads.append(
                    {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                )
                found.fields.append([x.partition(":")[0].lower() for x in lines[1:] if x])
                status = (
                    lines[0].split("status=")[1].split(" ")[0] if "status=" in lines[0] else "200"
                )
                writer.write(f"HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok".encode())
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    found.port = int(server.sockets[0].getsockname()[1])
    try:
        yield found
    finally:
        server.close()


class ControlPlane:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.spans.extend(decode_spans(request.content))
        return httpx2.Response(202)


def fake_stream(headers: list[tuple[bytes, bytes]]) -> Stream:
    head = RequestHead(
        b"GET", b"/shop/a", b"HTTP/1.1", headers, None, False, True, False, None, b"shop"
    )
    return cast(Stream, SimpleNamespace(head=head, peer=Peer("127.0.0.1")))


def reporter_for(cp: ControlPlane | None = None) -> SpanReporter:
    handler = cp.handle if cp is not None else (lambda _request: httpx2.Response(202))
    return SpanReporter(
        "http://cp", client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    )


@dataclass
class Rig:
    http: httpx2.AsyncClient
    upstream: Upstream
    telemetry: GatewayTelemetry
    recorder: Recorder
    cp: ControlPlane
    log: io.BytesIO

    async def spans(self) -> list[Span]:
        assert self.telemetry.reporter is not None
        await self.telemetry.reporter.flush()
        return self.cp.spans

    def access_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


@contextlib.asynccontextmanager
async def rig(
    *, sampler: Sampler | None = None, log: AccessLogMode | None = None
) -> AsyncIterator[Rig]:
    cp = ControlPlane()
    recorder = Recorder("gateway", side="client")
    reporter = reporter_for(cp)
    sink = io.BytesIO()
    clock = SystemClock()
    telemetry = GatewayTelemetry(
        clock=clock,
        recorder=recorder,
        reporter=reporter,
        sampler=sampler,
        access_log=AccessLog(log or AccessLogMode(1.0), sink=sink, rand=lambda: 0.5),
    )
    config = GatewayConfig({"shop-route": decode_route(json.dumps(ROUTE))}, "1")
    async with upstream() as up:
        clusters = Clusters(clock=clock)
        clusters.update("shop", [Endpoint("shop-1", "127.0.0.1", up.port)])
        gw = Gateway(config, clusters=clusters, pool=UpstreamPool(), telemetry=telemetry)
        server = ProxyServer(gw)
        port = await server.start("127.0.0.1", 0)
        try:
            async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                yield Rig(http, up, telemetry, recorder, cp, sink)
        finally:
            await server.stop()
            gw.pool.close()


async def test_the_upstream_continues_the_clients_trace_under_the_gateway_span() -> None:
    async with rig() as r:
        headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01", "tracestate": "k=v"}
        response = await r.http.get("/shop/items?x=1", headers=headers)
        assert response.status_code == 200
        [span] = await r.spans()
    [head] = r.upstream.heads
    sent = parse_traceparent(head["traceparent"], head.get("tracestate"))
    assert sent is not None
    assert sent.trace_id == TRACE_ID
    assert sent.span_id == span.id  # the service's server span will be the gateway span's child
    assert sent.tracestate == (("k", "v"),)
    assert head["x-crossway-caller"] == "gateway"
    assert span.parent_id == CLIENT_SPAN
    assert span.kind == "SERVER"
    assert span.service == "gateway"
    assert span.tags["http.route"] == "shop-route"
    assert span.tags["url.path"] == "/shop/items"
    assert span.tags["peer.service"] == "shop"
    assert span.tags["crossway.upstream"] == f"127.0.0.1:{r.upstream.port}"
    assert span.tags["http.response.status_code"] == "200"
    push = r.recorder.snapshot()
    assert push is not None
    assert push.side == "client"
    [series] = push.series
    assert (series.service, series.caller, series.route, series.count) == (
        "shop",
        "gateway",
        "shop-route",
        1,
    )


async def test_a_request_without_context_starts_a_trace_and_b3_is_answered_in_kind() -> None:
    async with rig() as r:
        await r.http.get("/shop/a")
        await r.http.get("/shop/b", headers={"b3": f"{TRACE_ID}-{CLIENT_SPAN}-1"})
        multi = {"X-B3-TraceId": TRACE_ID, "X-B3-SpanId": CLIENT_SPAN, "X-B3-Sampled": "1"}
        await r.http.get("/shop/c", headers=multi)
        spans = {s.tags["url.path"]: s for s in await r.spans()}
    plain, single, multi_head = r.upstream.heads
    root = spans["/shop/a"]
    assert root.parent_id is None
    assert plain["traceparent"] == f"00-{root.trace_id}-{root.id}-03"
    assert "b3" not in plain
    b3_span = spans["/shop/b"]
    assert b3_span.parent_id == CLIENT_SPAN
    assert single["b3"] == f"{TRACE_ID}-{b3_span.id}-1-{CLIENT_SPAN}"
    assert single["traceparent"] == f"00-{TRACE_ID}-{b3_span.id}-01"
    m_span = spans["/shop/c"]
    assert multi_head["x-b3-spanid"] == m_span.id
    assert multi_head["x-b3-parentspanid"] == CLIENT_SPAN
    assert multi_head["x-b3-traceid"] == TRACE_ID


async def test_what_a_client_sent_of_trace_fields_or_caller_never_reaches_the_upstream() -> None:
    async with rig() as r:
        spoofed = {"x-crossway-caller": "billing", "traceparent": "garbage", "x-b3-flags": "1"}
        await r.http.get("/shop/a", headers=spoofed)
        await r.http.get("/shop/b")
        spans = {s.tags["url.path"]: s for s in await r.spans()}
    paths = ["/shop/a", "/shop/b"]
    for head, fields, path in zip(r.upstream.heads, r.upstream.fields, paths, strict=True):
        assert fields.count("traceparent") == 1
        assert fields.count("x-crossway-caller") == 1
        assert "x-b3-flags" not in fields
        assert head["x-crossway-caller"] == "gateway"
        span = spans[path]
        assert span.parent_id is None  # an unreadable traceparent starts a new trace
        assert head["traceparent"] == f"00-{span.trace_id}-{span.id}-03"


async def test_each_span_carries_its_own_request_among_many_on_one_route() -> None:
    async with rig() as r:
        for path in ["/shop/a", "/shop/b", "/shop/a", "/shop/a?status=503", "/shop/a"]:
            await r.http.get(path)
        spans = await r.spans()
    assert [s.tags["url.path"] for s in spans] == ["/shop/a", "/shop/b"] + ["/shop/a"] * 3
    assert [s.tags["http.response.status_code"] for s in spans] == ["200"] * 3 + ["503", "200"]
    assert [s.is_error for s in spans] == [False, False, False, True, False]
    assert spans[3].tags["error"] == "503"
    assert len({s.id for s in spans}) == len({s.trace_id for s in spans}) == 5
    assert all(
        s.name == "get shop-route" and s.service == "gateway" for s in spans
    )  # lower-cased on ingest
    assert all(s.duration is not None and s.duration >= 1 for s in spans)


async def test_golden_signals_count_every_request_across_pushes() -> None:
    async with rig() as r:
        for _ in range(2):
            await r.http.get("/shop/a")
        first = r.recorder.snapshot()
        await r.http.get("/shop/a")
        await r.http.get("/shop/a?status=503")
        second = r.recorder.snapshot()
    assert first is not None
    assert second is not None
    assert [(s.status_class, s.count, s.errors) for s in first.series] == [("2xx", 2, 0)]
    by_class = {s.status_class: (s.count, s.errors) for s in second.series}
    assert by_class == {"2xx": (1, 0), "5xx": (1, 1)}


async def test_the_steps_may_be_called_with_the_request_instead_of_the_context() -> None:
    telemetry = GatewayTelemetry(
        clock=SystemClock(), recorder=Recorder("gateway", side="client"), reporter=reporter_for()
    )
    stream = fake_stream([(b"traceparent", f"00-{TRACE_ID}-{CLIENT_SPAN}-01".encode())])
    request = telemetry.begin_request(stream)
    extra, drop = telemetry.upstream_for(request, [], frozenset(), "shop", SHOP_1)
    assert b"traceparent" in drop
    assert dict(extra)[b"traceparent"] == f"00-{TRACE_ID}-{request.span_id}-01".encode()
    telemetry.finish_request(request, stream, "shop-route", 200, 10.0, 10.25)
    assert telemetry.reporter is not None
    assert len(telemetry.reporter) == 1
    assert telemetry.recorder is not None
    push = telemetry.recorder.snapshot()
    assert push is not None
    [series] = push.series
    assert (series.count, series.sum) == (1, 0.25)


def finish_one(
    telemetry: GatewayTelemetry, target: bytes, client: str, *, host: bytes = b"shop"
) -> None:
    head = RequestHead(b"GET", target, b"HTTP/1.1", [], None, False, True, False, None, host)
    stream = cast(Stream, SimpleNamespace(head=head, peer=Peer(client)))
    request = telemetry.begin_request(stream)
    telemetry.upstream_for(request, [], frozenset(), "shop", SHOP_1)
    telemetry.finish_request(request, stream, "shop-route", 200, 10.0, 10.25)


async def test_each_span_has_its_own_path_host_and_client_however_its_tags_are_shared() -> None:
    cp = ControlPlane()
    telemetry = GatewayTelemetry(clock=SystemClock(), reporter=reporter_for(cp))
    long_path = b"/shop/" + b"x" * 4000
    sent = [
        (b"/shop/a?q=1", "10.0.0.1", b"shop"),
        (b"/shop/a?q=2", "10.0.0.2", b"shop"),  # the same tags but the client's
        (b"/shop/a", "10.0.0.1", b"shop.example"),
        (long_path + b"?q=3", "10.0.0.3", b"shop"),  # too long to keep: encoded alone
        (b"/shop/a?q=4", "", b"shop"),
        (b"/shop/b", '10.0.0.4"', b"shop"),  # escaped in the JSON
    ]
    for target, client, host in sent:
        finish_one(telemetry, target, client, host=host)
    assert telemetry.reporter is not None
    await telemetry.reporter.flush()
    found = [
        (s.tags["url.path"], s.tags["client.address"], s.tags["server.address"]) for s in cp.spans
    ]
    assert found == [
        (target.partition(b"?")[0].decode(), client, host.decode()) for target, client, host in sent
    ]
    for span in cp.spans:
        assert span.tags["http.route"] == "shop-route"
        assert span.tags["peer.service"] == "shop"
        assert span.tags["crossway.upstream"] == "127.0.0.1:9"
        assert span.tags["http.response.status_code"] == "200"
        assert span.tags["http.request.method"] == "GET"
        assert span.name == "get shop-route"


def test_distinct_long_urls_and_clients_keep_the_span_cache_small() -> None:
    # A reporter that keeps one span: what stays allocated is the caches.
    reporter = SpanReporter(
        "http://cp",
        capacity=1,
        client=httpx2.AsyncClient(transport=httpx2.MockTransport(lambda _r: httpx2.Response(202))),
    )
    telemetry = GatewayTelemetry(clock=SystemClock(), reporter=reporter)
    finish_one(telemetry, b"/shop/warm", "10.0.0.1")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            # Unique paths of 60 KB, and unique query strings on one path
            # from as many clients, as a hostile or busy client sends them.
            finish_one(telemetry, b"/shop/%08d" % i + b"x" * 60_000, "10.0.0.1")
            finish_one(telemetry, b"/shop/items?id=%d&pad=" % i + b"y" * 60_000, f"10.1.{i}")
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 2_000_000, retained  # was ~300 MB: every URL kept, 60 KB each


async def test_an_unsampled_request_passes_its_decision_on_and_records_no_span() -> None:
    async with rig(sampler=Sampler(1.0)) as r:
        await r.http.get("/shop/x", headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-00"})
        assert await r.spans() == []
    [head] = r.upstream.heads
    assert head["traceparent"].endswith("-00")
    assert r.recorder.snapshot() is not None  # still counted


async def test_unrouted_requests_get_a_span_but_no_golden_signals() -> None:
    async with rig() as r:
        assert (await r.http.get("/nowhere")).status_code == 404
        [span] = await r.spans()
    assert "peer.service" not in span.tags
    assert span.tags["http.response.status_code"] == "404"
    assert r.recorder.snapshot() is None


async def test_the_access_log_writes_one_json_line_per_request() -> None:
    async with rig() as r:
        await r.http.get("/shop/items?page=2", headers={"user-agent": "probe/1"})
        await r.http.get("/nowhere")
    first, second = r.access_lines()
    assert first["method"] == "GET"
    assert first["path"] == "/shop/items?page=2"
    assert first["route"] == "shop-route"
    assert first["service"] == "shop"
    assert first["upstream"] == f"127.0.0.1:{r.upstream.port}"
    assert first["status"] == 200
    assert first["user_agent"] == "probe/1"
    assert first["client"] == "127.0.0.1"
    assert isinstance(first["duration_ms"], float)
    assert str(first["ts"]).endswith("Z")
    assert len(str(first["trace_id"])) == 32
    assert (second["status"], second["route"], second["upstream"]) == (404, None, None)


async def test_a_sampled_access_log_keeps_every_failure() -> None:
    async with rig(log=AccessLogMode(0.1)) as r:  # the rig's draws are 0.5: kept only if failed
        for _ in range(3):
            await r.http.get("/shop/ok")
        await r.http.get("/shop/fail?status=503")
    [line] = r.access_lines()
    assert line["status"] == 503


@pytest.mark.parametrize(
    ("text", "rate"), [("off", 0.0), ("full", 1.0), ("sample:0.25", 0.25), ("FULL", 1.0)]
)
def test_access_log_modes(text: str, rate: float) -> None:
    assert parse_access_log(text).rate == rate


@pytest.mark.parametrize("text", ["sample", "sample:0", "sample:2", "sample:x", "some"])
def test_bad_access_log_modes_name_the_setting(text: str) -> None:
    with pytest.raises(InvalidArgument, match="access_log"):
        parse_access_log(text)


def test_trace_fields_are_read_w3c_first_then_b3() -> None:
    w3c = [(b"traceparent", f"00-{TRACE_ID}-{CLIENT_SPAN}-01".encode()), (b"b3", b"0")]
    ctx, kind = extract_fields(w3c)
    assert ctx is not None
    assert (ctx.span_id, kind) == (CLIENT_SPAN, "")
    ctx, kind = extract_fields([(b"b3", f"{TRACE_ID}-{CLIENT_SPAN}".encode())])
    assert ctx is not None
    assert kind == "single"
    assert extract_fields([(b"host", b"x")]) == (None, "")
    assert extract_fields([(b"b3", b"garbage")]) == (None, "")


def test_build_telemetry_needs_something_to_do_and_checks_its_settings() -> None:
    clock = SystemClock()
    assert build_telemetry(TelemetrySettings(), clock=clock) is None
    assert (
        build_telemetry(TelemetrySettings(control_plane="http://cp", enabled=False), clock=clock)
        is None
    )
    on = build_telemetry(TelemetrySettings(control_plane="http://cp"), clock=clock)
    assert on is not None
    assert on.reporter is not None
    assert on.recorder is not None
    logs_only = build_telemetry(TelemetrySettings(access_log=AccessLogMode(1.0)), clock=clock)
    assert logs_only is not None
    assert logs_only.reporter is None
    with pytest.raises(InvalidArgument, match="stats_interval"):
        TelemetrySettings(stats_interval=0.5)


def test_the_config_file_may_set_the_access_log_and_the_flag_wins() -> None:
    from crossway.proxy.routes.config import ConfigFileError, parse_config
    from crossway.proxy.run import GatewaySettings, _telemetry_settings

    config = parse_config("access_log: sample:0.5\nroutes: {}\n")
    assert config.access_log == "sample:0.5"
    from_file = _telemetry_settings(GatewaySettings(), config)
    assert from_file.access_log.rate == 0.5
    flag = _telemetry_settings(GatewaySettings(access_log="full"), config)
    assert flag.access_log.rate == 1.0
    assert _telemetry_settings(GatewaySettings(), parse_config("routes: {}\n")).access_log.rate == 0
    with pytest.raises(ConfigFileError, match=r"gateway.yaml:2: .*access_log"):
        parse_config("routes: {}\naccess_log: sometimes\n", source="gateway.yaml")
