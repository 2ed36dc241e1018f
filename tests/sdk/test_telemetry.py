"""The SDK's telemetry wiring: middleware and transport feed the recorders and
the span reporter; the client pushes both to the control plane."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
import msgspec
import pytest
from fastapi import FastAPI

from crossway.registry.model import Instance
from crossway.sdk.asgi import CrosswayMiddleware
from crossway.sdk.client import Client
from crossway.sdk.policies import BackoffSpec, CallPolicy, RetrySpec
from crossway.sdk.settings import InvalidSettings
from crossway.sdk.transport import CrosswayTransport
from crossway.telemetry.tracecontext import TraceContext, parse_traceparent, use_trace
from crossway.telemetry.traces.model import Span
from crossway.telemetry.traces.zipkin import decode_spans

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class ControlPlane:
    """A fake control plane behind a MockTransport: keeps pushes and spans."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.pushes: list[dict[str, Any]] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/api/v2/spans":
            self.spans.extend(decode_spans(request.content))
            return httpx2.Response(202)
        if request.url.path == "/v1/stats/push":
            self.pushes.append(msgspec.json.decode(request.content))
            return httpx2.Response(202, json={"accepted": 1, "overflowed": 0})
        return httpx2.Response(200, json=[])


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the discovery cache's default directory is relative


def make_client(cp: ControlPlane, **kw: Any) -> Client:
    kw.setdefault("service", "shop")
    return Client(
        register=False,
        address="127.0.0.1",
        transport=httpx2.MockTransport(cp.handle),
        **kw,
    )


def app_for(client: Client) -> FastAPI:
    app = FastAPI()
    app.add_middleware(CrosswayMiddleware, client=client)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}

    @app.get("/fail")
    async def fail() -> None:
        raise RuntimeError("boom")

    @app.get("/metrics")
    async def metrics() -> str:
        return ""

    return app


def asgi(app: FastAPI) -> httpx2.AsyncClient:
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx2.AsyncClient(transport=transport, base_url="http://shop")


async def sent(client: Client) -> None:
    assert client.telemetry is not None
    await client.telemetry.reporter.flush()
    await client.telemetry.pusher.push()


async def test_the_middleware_records_a_server_span_and_the_callers_edge() -> None:
    cp = ControlPlane()
    client = make_client(cp)
    async with asgi(app_for(client)) as http:
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT}-01", "X-Crossway-Caller": "web"}
        assert (await http.get("/items/7", headers=headers)).status_code == 200
        assert (await http.get("/fail")).status_code == 500
        assert (await http.get("/metrics")).status_code == 200  # a probe: left out
    await sent(client)
    by_path = {s.tags["url.path"]: s for s in cp.spans}
    assert set(by_path) == {"/items/7", "/fail"}
    item = by_path["/items/7"]
    assert (item.trace_id, item.parent_id, item.kind) == (TRACE_ID, PARENT, "SERVER")
    assert item.tags["http.route"] == "/items/{item_id}"
    assert item.tags["http.response.status_code"] == "200"
    assert item.tags["server.address"] == "shop"
    assert "error" not in item.tags
    assert item.service == "shop"
    failed = by_path["/fail"]
    assert failed.parent_id is None
    assert failed.tags["error"] == "boom"
    [push] = cp.pushes
    assert push.get("side", "server") == "server"
    assert push["source"]["service"] == "shop"
    series = {(s["route"], s.get("caller")): s for s in push["series"]}
    assert series[("/items/{item_id}", "web")]["count"] == 1
    assert series[("/fail", None)]["errors"] == 1
    assert not any(route == "/metrics" for route, _ in series)


async def test_an_unsampled_request_is_counted_but_not_traced() -> None:
    cp = ControlPlane()
    client = make_client(cp)
    async with asgi(app_for(client)) as http:
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT}-00"}
        assert (await http.get("/items/1", headers=headers)).status_code == 200
    await sent(client)
    assert cp.spans == []
    assert sum(s["count"] for s in cp.pushes[0]["series"]) == 1


async def test_a_sample_rate_of_zero_leaves_new_traces_out() -> None:
    cp = ControlPlane()
    client = make_client(cp, trace_sample_rate=0.0)
    async with asgi(app_for(client)) as http:
        await http.get("/items/1")
        await http.get("/items/2", headers={"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
    await sent(client)
    assert [s.tags["url.path"] for s in cp.spans] == ["/items/2"]


class OneService:
    """Discovery with one instance of `orders`."""

    def __init__(self) -> None:
        self.listed = [Instance("orders", "orders-1", "10.0.0.1", 8001)]

    async def instances(self, service: str) -> list[Instance]:
        return list(self.listed) if service == "orders" else []

    def peek(self, service: str) -> list[Instance] | None:
        return list(self.listed) if service == "orders" else None

    def subscribe(self, service: str, callback: Any) -> Any:
        return lambda: None


async def test_the_transport_records_a_client_span_per_attempt_under_the_current_trace() -> None:
    cp = ControlPlane()
    client = make_client(cp)
    seen: list[httpx2.Headers] = []  # as each attempt left: the request object is reused

    def backend(request: httpx2.Request) -> httpx2.Response:
        seen.append(httpx2.Headers(request.headers))
        return httpx2.Response(503 if len(seen) == 1 else 200)

    retries = RetrySpec(attempts=2, backoff=BackoffSpec(base="1ms", cap="1ms"), budget=None)
    transport = CrosswayTransport(
        OneService(),
        inner=httpx2.MockTransport(backend),
        policies={"orders": CallPolicy(retries=retries)},
        telemetry=client.telemetry,
    )
    current = TraceContext.root().child()
    async with httpx2.AsyncClient(transport=transport) as http:
        with use_trace(current):
            response = await http.get(
                "http://orders/items/1", extensions={"crossway.route": "/items/{id}"}
            )
    assert response.status_code == 200
    await sent(client)
    assert [h["x-crossway-caller"] for h in seen] == ["shop", "shop"]
    sent_ids = [parse_traceparent(h["traceparent"]) for h in seen]
    assert all(c is not None and c.trace_id == current.trace_id for c in sent_ids)
    assert len(cp.spans) == 2
    for span, ctx in zip(cp.spans, sent_ids, strict=True):
        assert ctx is not None
        assert span.id == ctx.span_id
        assert span.parent_id == current.span_id
        assert span.kind == "CLIENT"
        assert span.remote_service == "orders"
        assert span.tags["peer.service"] == "orders"
        assert span.tags["url.full"] == "http://orders/items/1"
        assert span.tags["server.address"] == "10.0.0.1:8001"
    assert cp.spans[0].tags["error"] == "503"
    assert cp.spans[1].tags["http.request.resend_count"] == "1"
    [push] = cp.pushes
    assert push["side"] == "client"
    [edge] = [s for s in push["series"] if s["status_class"] == "2xx"]
    assert (edge["service"], edge["caller"], edge["route"]) == ("orders", "shop", "/items/{id}")


async def test_a_call_outside_any_request_starts_a_trace_of_its_own() -> None:
    cp = ControlPlane()
    client = make_client(cp)
    transport = CrosswayTransport(
        OneService(),
        inner=httpx2.MockTransport(lambda r: httpx2.Response(200)),
        telemetry=client.telemetry,
    )
    async with httpx2.AsyncClient(transport=transport) as http:
        await http.get("http://orders/x")
    await sent(client)
    [span] = cp.spans
    assert span.parent_id is None
    assert len(span.trace_id) == 32
    assert cp.pushes[0]["series"][0]["route"] == "*"


async def test_client_side_counts_survive_snapshots_and_come_from_any_thread() -> None:
    """On the loop's thread an attempt counts into a kept cell; a snapshot
    retires it and later attempts go to a fresh one. A worker thread's
    attempts (a blocking client) count too."""
    cp = ControlPlane()
    client = make_client(cp)
    telemetry = client.telemetry
    assert telemetry is not None
    await telemetry.start("shop-1")
    try:
        transport = CrosswayTransport(
            OneService(),
            inner=httpx2.MockTransport(lambda r: httpx2.Response(200)),
            telemetry=telemetry,
        )
        async with httpx2.AsyncClient(transport=transport) as http:
            for _ in range(3):
                await http.get("http://orders/x")
            first = telemetry.client.snapshot()
            for _ in range(2):
                await http.get("http://orders/x")
            await asyncio.to_thread(
                telemetry.attempted, "orders", "GET", None, 200, 0.0, 0.001, False, None
            )
            second = telemetry.client.snapshot()
    finally:
        await telemetry.stop()
    assert first is not None
    assert second is not None
    assert [s.count for s in first.series] == [3]
    assert [s.count for s in second.series] == [3]
    assert (second.series[0].service, second.series[0].caller) == ("orders", "shop")


def test_telemetry_is_off_without_a_service_or_when_disabled() -> None:
    cp = ControlPlane()
    assert make_client(cp, service=None).telemetry is None
    assert make_client(cp, telemetry=False).telemetry is None
    assert make_client(cp).telemetry is not None


def test_the_push_interval_and_sample_rate_are_checked() -> None:
    cp = ControlPlane()
    with pytest.raises(InvalidSettings, match="stats_interval"):
        make_client(cp, stats_interval=0.1)
    with pytest.raises(InvalidSettings, match="trace_sample_rate"):
        make_client(cp, trace_sample_rate=2.0)


async def test_a_started_client_pushes_every_interval_and_flushes_on_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CROSSWAY_STATS_INTERVAL", "1s")
    cp = ControlPlane()
    client = make_client(cp)
    assert client.telemetry is not None
    assert client.telemetry.pusher.interval == 1.0
    await client.start()
    try:
        async with asgi(app_for(client)) as http:
            await http.get("/items/1")
            async with asyncio.timeout(5):
                while not (cp.pushes and cp.spans):
                    await asyncio.sleep(0.05)
            await http.get("/items/2")
    finally:
        await client.stop()
    assert sum(s["count"] for p in cp.pushes for s in p["series"]) == 2
    assert len(cp.spans) == 2
    assert all(p["source"]["instance"] == client.instance_id for p in cp.pushes)
