from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from crossway.core.clock import VirtualClock
from crossway.core.errors import InvalidArgument
from crossway.registry.model import Instance
from crossway.resilience import TokenBucket, current_deadline, remaining_time
from crossway.sdk.asgi import (
    CrosswayMiddleware,
    build_limiter,
    lifespan,
    metrics_endpoint,
    route_template,
)
from crossway.sdk.client import Client
from crossway.sdk.config import bindings
from crossway.sdk.settings import InvalidSettings
from crossway.sdk.transport import CrosswayTransport
from crossway.telemetry.tracecontext import current_trace
from crossway.testing.server import CrosswayServer, shared_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT}-01"


def make_client(**kw: Any) -> Client:
    kw.setdefault("service", "shop")
    return Client(register=False, address="127.0.0.1", **kw)


def app_with(client: Client, **middleware: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(CrosswayMiddleware, client=client, **middleware)
    app.add_route("/metrics", metrics_endpoint(client))

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        trace = current_trace()
        return {
            "id": item_id,
            "trace": trace.trace_id if trace else None,
            "parent": trace.parent_id if trace else None,
            "left": remaining_time(),
        }

    @app.get("/fail")
    async def fail() -> None:
        raise RuntimeError("boom")

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(status_code=404)

    inner = Starlette(routes=[Route("/things/{name}", lambda r: JSONResponse({}))])
    app.mount("/sub", inner)
    return app


def http(app: Any) -> httpx2.AsyncClient:
    transport = httpx2.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx2.AsyncClient(transport=transport, base_url="http://shop")


def served(client: Client, route: str, status_class: str, method: str = "GET") -> float:
    labels = {"service": "shop", "route": route, "method": method, "status_class": status_class}
    value = client.metrics_registry.get_sample_value("http_server_requests_total", labels)
    return value or 0.0


# -- metrics ---------------------------------------------------------------------------------


async def test_counts_requests_by_route_template() -> None:
    client = make_client()
    async with http(app_with(client)) as h:
        for n in range(3):
            assert (await h.get(f"/items/{n}")).status_code == 200
        assert (await h.get("/nowhere")).status_code == 404
        assert (await h.get("/missing")).status_code == 404
        assert (await h.get("/fail")).status_code == 500
        assert (await h.get("/sub/things/x")).status_code == 200
        assert (await h.post("/items/1")).status_code == 405
    assert served(client, "/items/{item_id}", "2xx") == 3
    assert served(client, "unmatched", "4xx") == 1
    assert served(client, "/missing", "4xx") == 1
    assert served(client, "/fail", "5xx") == 1
    assert served(client, "/sub/things/{name}", "2xx") == 1
    assert served(client, "/items/{item_id}", "4xx", method="POST") == 1
    count = client.metrics_registry.get_sample_value(
        "http_server_request_duration_seconds_count",
        {"service": "shop", "route": "/items/{item_id}", "method": "GET", "status_class": "2xx"},
    )
    assert count == 3


async def test_metrics_endpoint_serves_the_clients_registry() -> None:
    client = make_client()
    async with http(app_with(client)) as h:
        await h.get("/items/1")
        text = (await h.get("/metrics")).text
        assert 'http_server_requests_total{method="GET",route="/items/{item_id}"' in text
        open_metrics = await h.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.text.endswith("# EOF\n")


async def test_two_apps_on_one_registry_share_the_metrics() -> None:
    client = make_client()
    async with http(app_with(client)) as one, http(app_with(client)) as two:
        await one.get("/items/1")
        await two.get("/items/2")
    assert served(client, "/items/{item_id}", "2xx") == 2


def test_route_template_of_scopes() -> None:
    route = Route("/a/{b}", lambda r: JSONResponse({}))
    assert route_template({}) == "unmatched"
    assert route_template({"route": route}) == "/a/{b}"
    mounted = {"route": route, "app_root_path": "/api", "root_path": "/api/v1"}
    assert route_template(mounted) == "/v1/a/{b}"


# -- tracing and deadlines -------------------------------------------------------------------


async def test_continues_the_callers_trace_and_restores_the_context() -> None:
    async with http(app_with(make_client())) as h:
        joined = (await h.get("/items/1", headers={"traceparent": TRACEPARENT})).json()
        fresh = (await h.get("/items/1")).json()
    assert joined["trace"] == TRACE_ID
    assert joined["parent"] == PARENT
    assert fresh["trace"] not in (None, TRACE_ID)
    assert current_trace() is None


async def test_b3_headers_are_read_too() -> None:
    headers = {"x-b3-traceid": TRACE_ID, "x-b3-spanid": PARENT, "x-b3-sampled": "1"}
    async with http(app_with(make_client())) as h:
        assert (await h.get("/items/1", headers=headers)).json()["trace"] == TRACE_ID


async def test_inbound_deadline_becomes_the_current_deadline() -> None:
    async with http(app_with(make_client())) as h:
        left = (await h.get("/items/1", headers={"X-Crossway-Deadline": "5000"})).json()["left"]
        assert 4.0 < left <= 5.0
        plain = await h.get("/items/1", headers={"X-Crossway-Deadline": "soon"})
        assert plain.json()["left"] is None
        late = await h.get("/items/1", headers={"X-Crossway-Deadline": "0"})
    assert late.status_code == 504
    assert late.json()["error"]["code"] == "deadline_exceeded"
    assert current_deadline() is None


class FakeDiscovery:
    def __init__(self, instances: dict[str, list[Instance]]) -> None:
        self.known = instances

    async def instances(self, service: str) -> list[Instance]:
        return self.known.get(service, [])

    def peek(self, service: str) -> list[Instance] | None:
        return self.known.get(service)

    def subscribe(
        self, service: str, callback: Callable[[str, list[Instance]], None]
    ) -> Callable[[], None]:
        return lambda: None


async def test_outbound_calls_through_the_sdk_continue_the_trace_and_deadline() -> None:
    seen: list[httpx2.Request] = []

    def downstream(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"ok": True})

    discovery = FakeDiscovery({"stock": [Instance("stock", "s1", "10.0.0.9", 9000)]})
    transport = CrosswayTransport(discovery, inner=httpx2.MockTransport(downstream))
    outbound = httpx2.AsyncClient(transport=transport)
    app = FastAPI()
    app.add_middleware(CrosswayMiddleware, client=make_client())

    @app.get("/order")
    async def order() -> dict[str, Any]:
        return (await outbound.get("http://stock/level")).json()  # type: ignore[no-any-return]

    headers = {"traceparent": TRACEPARENT, "X-Crossway-Deadline": "3000"}
    async with http(app) as h:
        assert (await h.get("/order", headers=headers)).json() == {"ok": True}
    await outbound.aclose()
    sent = seen[0].headers
    assert sent["traceparent"].split("-")[1] == TRACE_ID
    assert sent["traceparent"].split("-")[2] not in (PARENT,)
    assert 2000 < int(sent["x-crossway-deadline"]) <= 3000


# -- rate limits -----------------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after() -> None:
    clock = VirtualClock()
    client = make_client(clock=clock)
    async with http(app_with(client, rate_limit="2/s")) as h:
        assert [(await h.get("/items/1")).status_code for _ in range(2)] == [200, 200]
        refused = await h.get("/items/1")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        body = refused.json()["error"]
        assert body["code"] == "rate_limited"
        assert 0 < body["retry_after"] <= 0.5
        assert (await h.get("/metrics")).status_code == 200  # exempt
        clock.advance(0.5)
        assert (await h.get("/items/1")).status_code == 200
    assert served(client, "unmatched", "4xx") == 1


async def test_rate_limit_per_key_and_with_a_ready_limiter() -> None:
    clock = VirtualClock()
    client = make_client(clock=clock)

    def tenant(scope: Any) -> str:
        return dict(scope["headers"]).get(b"x-tenant", b"-").decode()

    async with http(app_with(client, rate_limit=1, rate_limit_key=tenant)) as h:
        assert (await h.get("/items/1", headers={"x-tenant": "a"})).status_code == 200
        assert (await h.get("/items/1", headers={"x-tenant": "a"})).status_code == 429
        assert (await h.get("/items/1", headers={"x-tenant": "b"})).status_code == 200
    bucket = TokenBucket(rate="1/s", burst=1)
    async with http(app_with(make_client(clock=clock), rate_limit=bucket)) as h:
        assert [(await h.get("/items/1")).status_code for _ in range(2)] == [200, 429]


def test_limiter_arguments_are_checked() -> None:
    assert build_limiter(None, None) is None
    with pytest.raises(InvalidArgument):
        build_limiter(None, lambda scope: "k")
    with pytest.raises(InvalidArgument):
        build_limiter(TokenBucket(rate=1), lambda scope: "k")
    with pytest.raises(ValueError, match="rate"):
        build_limiter("lots", None)


async def test_other_scopes_pass_through() -> None:
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    middleware = CrosswayMiddleware(app, client=make_client(), rate_limit="1/s")
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await middleware({"type": "websocket", "path": "/ws", "headers": []}, None, None)  # type: ignore[arg-type]
    assert calls == ["lifespan", "websocket"]


# -- lifespan ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> CrosswayServer:
    return shared_server("memory")  # one for every module; names here are this module's


def registered(server: CrosswayServer, service: str) -> list[str]:
    found = httpx2.get(f"{server.url}/v1/services/{service}", timeout=5).json()
    return [i["id"] for i in found]


class Greeting(BaseModel):
    text: str = "hello"


async def test_lifespan_runs_the_client_bindings_and_the_inner_lifespan(
    server: CrosswayServer, tmp_path: Path
) -> None:
    client = Client(
        url=server.url, service="ls-shop", port=8123, address="127.0.0.1", cache_dir=tmp_path
    )
    greeting = client.bind(Greeting, "greeting.yaml")
    events: list[str] = []

    @asynccontextmanager
    async def mine(app: Any) -> AsyncIterator[dict[str, Any]]:
        events.append(f"inner up, registered={registered(server, 'ls-shop')}")
        yield {"db": "pool"}
        events.append("inner down")

    app = FastAPI(lifespan=lifespan(client, mine))
    async with app.router.lifespan_context(app) as state:
        assert state == {"db": "pool"}
        assert app.state.crossway is client
        assert greeting.text == "hello"
        assert greeting.running
    assert events == [f"inner up, registered={[client.instance_id]}", "inner down"]
    assert registered(server, "ls-shop") == []
    assert not greeting.running
    assert greeting in bindings(client)


async def test_a_client_that_cannot_start_fails_the_start_up(tmp_path: Path) -> None:
    client = Client(service=None, address="127.0.0.1", cache_dir=tmp_path, url="http://127.0.0.1:9")
    app = Starlette(lifespan=lifespan(client))
    with pytest.raises(InvalidSettings):
        async with app.router.lifespan_context(app):
            pass
    assert not client.started


async def test_shutdown_stops_the_client_when_the_inner_lifespan_fails(
    server: CrosswayServer, tmp_path: Path
) -> None:
    client = Client(
        url=server.url, service="ls-fail", port=8124, address="127.0.0.1", cache_dir=tmp_path
    )

    @asynccontextmanager
    async def broken(app: Any) -> AsyncIterator[None]:
        yield
        raise RuntimeError("inner shutdown failed")

    app = Starlette(lifespan=lifespan(client, broken))
    with pytest.raises(RuntimeError, match="inner shutdown"):
        async with app.router.lifespan_context(app):
            assert registered(server, "ls-fail") == [client.instance_id]
    assert registered(server, "ls-fail") == []
    await asyncio.sleep(0)


async def test_a_request_handler_reaches_the_client_through_app_state(
    server: CrosswayServer, tmp_path: Path
) -> None:
    client = Client(url=server.url, register=False, service="st", cache_dir=tmp_path)

    async def who(request: Request) -> JSONResponse:
        return JSONResponse({"service": request.app.state.crossway.settings.service})

    app = Starlette(routes=[Route("/who", who), Mount("/m", routes=[])], lifespan=lifespan(client))
    async with app.router.lifespan_context(app), http(app) as h:
        assert (await h.get("/who")).json() == {"service": "st"}


async def test_registering_waits_until_the_server_listens(
    server: CrosswayServer, tmp_path: Path
) -> None:
    # ASGI servers run the lifespan before they listen: with the setting on,
    # nobody is sent to this instance until its port accepts connections.
    from crossway.testing.services import free_port

    port = free_port()
    client = Client(
        url=server.url,
        service="ls-late",
        port=port,
        address="127.0.0.1",
        cache_dir=tmp_path,
        register_when_listening=True,
    )
    app = Starlette(lifespan=lifespan(client))
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.3)
        assert registered(server, "ls-late") == []  # started, not listening yet
        listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
        try:
            for _ in range(100):
                if registered(server, "ls-late") == [client.instance_id]:
                    break
                await asyncio.sleep(0.05)
            assert registered(server, "ls-late") == [client.instance_id]
        finally:
            listener.close()
    assert registered(server, "ls-late") == []


async def test_a_client_stopped_before_its_server_listened_never_registers(
    server: CrosswayServer, tmp_path: Path
) -> None:
    from crossway.testing.services import free_port

    client = Client(
        url=server.url,
        service="ls-never",
        port=free_port(),
        address="127.0.0.1",
        cache_dir=tmp_path,
        register_when_listening=True,
    )
    app = Starlette(lifespan=lifespan(client))
    async with app.router.lifespan_context(app):
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.2)
    assert registered(server, "ls-never") == []
    assert client.registrations == 0
