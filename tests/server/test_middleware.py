"""Request metrics, the access log and bearer-token auth."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.core.clock import VirtualClock
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.http import json_response
from crossway.server.middleware import KNOWN_METHODS, method_label, status_class
from crossway.server.settings import ServerSettings
from crossway.store.local import LocalStore

TOKEN = "correct horse battery staple"


def item_routes(ctx: ServerContext) -> list[BaseRoute]:
    async def item(request: Request) -> Response:
        clock = ctx.clock
        assert isinstance(clock, VirtualClock)
        clock.advance(0.25)  # the handler "takes" a quarter of a second
        return json_response({"id": request.path_params["item"]})

    return [Route("/v1/test/items/{item}", item, methods=["GET", "POST", "PUT", "DELETE"])]


def _sample(ctx: ServerContext, name: str, **labels: str) -> float:
    value = ctx.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def vctx(store: LocalStore) -> ServerContext:
    return ServerContext(store=store, settings=ServerSettings(store="memory"), clock=VirtualClock())


@pytest.fixture
async def api(vctx: ServerContext) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=create_app(vctx, extra=[item_routes]))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_requests_are_counted_by_route_template(
    api: httpx2.AsyncClient, vctx: ServerContext
) -> None:
    for i in range(20):
        assert (await api.get(f"/v1/test/items/{i}")).status_code == 200
    labels = {
        "service": "crossway-control-plane",
        "method": "GET",
        "route": "/v1/test/items/{item}",
        "status_class": "2xx",
    }
    assert _sample(vctx, "http_server_requests_total", **labels) == 20
    series = [
        s.labels["route"]
        for metric in vctx.registry.collect()
        if metric.name == "http_server_requests"
        for s in metric.samples
        if s.name == "http_server_requests_total"
    ]
    assert series == ["/v1/test/items/{item}"]


async def test_latency_is_measured_on_the_context_clock(
    api: httpx2.AsyncClient, vctx: ServerContext
) -> None:
    await api.get("/v1/test/items/a")
    await api.get("/v1/test/items/b")
    labels = {
        "service": "crossway-control-plane",
        "method": "GET",
        "route": "/v1/test/items/{item}",
        "status_class": "2xx",
    }
    assert _sample(vctx, "http_server_request_duration_seconds_sum", **labels) == pytest.approx(0.5)
    assert _sample(vctx, "http_server_request_duration_seconds_bucket", le="0.25", **labels) == 2
    assert _sample(vctx, "http_server_request_duration_seconds_bucket", le="0.1", **labels) == 0
    assert _sample(vctx, "http_server_requests_in_flight") == 0


async def test_unmatched_paths_and_odd_methods_do_not_grow_cardinality(
    api: httpx2.AsyncClient, vctx: ServerContext
) -> None:
    for path in ("/x", "/y/z", "/v1/test/items", "/%2e%2e/etc"):
        assert (await api.get(path)).status_code == 404
    await api.request("BREW", "/v1/test/items/1")
    assert (
        _sample(
            vctx,
            "http_server_requests_total",
            service="crossway-control-plane",
            method="GET",
            route="unmatched",
            status_class="4xx",
        )
        == 4
    )
    assert (
        _sample(
            vctx,
            "http_server_requests_total",
            service="crossway-control-plane",
            method="other",
            route="/v1/test/items/{item}",
            status_class="4xx",
        )
        == 1
    )


async def test_metrics_endpoint_shows_the_counters(api: httpx2.AsyncClient) -> None:
    await api.get("/healthz")
    r = await api.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert (
        'http_server_requests_total{method="GET",route="/healthz",'
        'service="crossway-control-plane",status_class="2xx"} 1.0' in r.text
    )
    assert "http_server_request_duration_seconds_bucket" in r.text


async def test_access_log_line_per_request(
    api: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="crossway.access"):
        await api.put("/v1/test/items/7")
        await api.get("/healthz")  # probes are logged at debug only
    records = [r for r in caplog.records if r.name == "crossway.access"]
    assert len(records) == 1
    record = records[0]
    assert record.__dict__["method"] == "PUT"
    assert record.__dict__["route"] == "/v1/test/items/{item}"
    assert record.__dict__["path"] == "/v1/test/items/7"
    assert record.__dict__["status"] == 200
    assert record.__dict__["duration_ms"] == pytest.approx(250.0)
    assert record.__dict__["remote"] == "127.0.0.1:123"


def test_pure_label_helpers() -> None:
    assert status_class(204) == "2xx"
    assert status_class(503) == "5xx"
    assert status_class(0) == "none"
    assert method_label("GET") == "GET"
    assert method_label("get") == "other"


@given(st.text(max_size=20))
def test_method_label_is_bounded(method: str) -> None:
    assert method_label(method) in KNOWN_METHODS | {"other"}


# Auth.


@pytest.fixture
async def guarded(store: LocalStore) -> AsyncIterator[httpx2.AsyncClient]:
    ctx = ServerContext(store=store, settings=ServerSettings(store="memory", token=TOKEN))
    transport = httpx2.ASGITransport(app=create_app(ctx))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_probes_need_no_token(guarded: httpx2.AsyncClient) -> None:
    assert (await guarded.get("/healthz")).status_code == 200
    assert (await guarded.get("/readyz")).status_code == 200


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "needs a token"),
        ("Bearer wrong", "not valid"),
        (f"Bearer {TOKEN}x", "not valid"),
        (f"Basic {TOKEN}", "must be: Bearer"),
        ("Bearer ", "must be: Bearer"),
    ],
)
async def test_everything_else_needs_the_token(
    guarded: httpx2.AsyncClient, header: str | None, message: str
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for path in ("/metrics", "/v1/watch", "/no/such/path"):
        r = await guarded.get(path, headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        assert message in r.json()["error"]["message"]
        assert r.headers["www-authenticate"].startswith("Bearer")


async def test_the_right_token_is_let_in(guarded: httpx2.AsyncClient) -> None:
    for scheme in ("Bearer", "bearer"):
        r = await guarded.get("/metrics", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert r.status_code == 200
    r = await guarded.get("/nope", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404
