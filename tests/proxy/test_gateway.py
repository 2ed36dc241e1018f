from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from crossway.balance import Endpoint
from crossway.core.clock import SystemClock
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import decode_route
from crossway.proxy.server import ProxyServer
from crossway.proxy.upstream import UpstreamPool

from .upstreams import raw_upstream, uvicorn_upstream

pytestmark = pytest.mark.integration

MINIMAL = {
    "match": {"path_prefix": "/orders"},
    "backends": [
        {"service": "orders", "weight": 90},
        {"service": "orders-canary", "weight": 10},
    ],
    "timeout": "5s",
    "retries": {"attempts": 2},
}


def config(version: str = "1", **routes: dict[str, object]) -> GatewayConfig:
    return GatewayConfig(
        {name: decode_route(json.dumps(doc)) for name, doc in routes.items()}, version
    )


def endpoint(port: int, name: str = "") -> Endpoint:
    return Endpoint(name or f"ep-{port}", "127.0.0.1", port)


@contextlib.asynccontextmanager
async def running(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    server = ProxyServer(gw)
    port = await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        await server.stop()
        gw.pool.close()


def gateway(cfg: GatewayConfig, clusters: Clusters, rng: float = 0.5) -> Gateway:
    return Gateway(cfg, clusters=clusters, pool=UpstreamPool(), rng=lambda: rng)


async def test_minimal_document_splits_between_services() -> None:
    async with uvicorn_upstream() as main, uvicorn_upstream() as canary:
        clusters = Clusters(clock=SystemClock())
        clusters.update("orders", [endpoint(main)])
        clusters.update("orders-canary", [endpoint(canary)])
        draws = itertools.cycle([i / 100 for i in range(100)])
        gw = Gateway(
            config(orders=MINIMAL), clusters=clusters, pool=UpstreamPool(), rng=lambda: next(draws)
        )
        async with running(gw) as client:
            for _ in range(100):
                response = await client.get("/orders/7")
                assert response.text == "hello /orders/7"
            main_pool = gw.pool.endpoint(("127.0.0.1", main))
            canary_pool = gw.pool.endpoint(("127.0.0.1", canary))
            assert (main_pool.acquired, canary_pool.acquired) == (90, 10)
            assert main_pool.active == canary_pool.active == 1  # keep-alive reuse


async def test_no_route_is_a_json_404() -> None:
    clusters = Clusters(clock=SystemClock())
    async with running(gateway(config(orders=MINIMAL), clusters)) as client:
        response = await client.get("/nowhere")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_route"


async def test_no_endpoints_is_503_with_reason() -> None:
    clusters = Clusters(clock=SystemClock())
    async with running(gateway(config(orders=MINIMAL), clusters)) as client:
        response = await client.get("/orders")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_healthy_upstream"
    assert response.headers["x-crossway-reason"] == "no_endpoints"


async def test_connect_failure_is_retried_on_another_endpoint() -> None:
    async with uvicorn_upstream() as alive:
        clusters = Clusters(clock=SystemClock())
        clusters.update("orders", [endpoint(1, "dead"), endpoint(alive, "alive")])
        clusters.update("orders-canary", [endpoint(alive, "alive")])
        gw = gateway(config(orders=MINIMAL), clusters, rng=0.1)
        async with running(gw) as client:
            statuses = [(await client.post("/orders", content=b"x")).status_code for _ in range(6)]
    assert statuses == [200] * 6


async def test_direct_response_rewrites_and_header_edits() -> None:
    direct = {"match": {"path": "/ping"}, "direct_response": {"status": 200, "body": "pong"}}
    prefix = {
        "match": {"path_prefix": "/api"},
        "backends": [{"service": "svc"}],
        "rewrite": {"prefix": "/v2"},
    }
    edits = {
        "match": {"path": "/h"},
        "backends": [{"service": "svc"}],
        "rewrite": {"path": "/headers"},
        "request_headers": {"set": {"x-route": "edited"}, "remove": ["x-secret"]},
    }
    async with uvicorn_upstream() as up:
        clusters = Clusters(clock=SystemClock())
        clusters.update("svc", [endpoint(up)])
        cfg = config(direct=direct, api=prefix, edits=edits)
        async with running(gateway(cfg, clusters)) as client:
            pong = await client.get("/ping")
            moved = await client.get("/api/items?x=1")
            seen = await client.get("/h", headers={"x-secret": "s", "x-route": "client"})
    assert pong.text == "pong"
    assert moved.text == "hello /v2/items"
    lines = seen.text.split("\n")
    assert "x-route: edited" in lines
    assert "x-route: client" not in lines
    assert not any(line.startswith("x-secret") for line in lines)


async def test_config_swap_under_load_fails_nothing() -> None:
    old = {"match": {"path_prefix": "/"}, "backends": [{"service": "a"}]}
    new = {"match": {"path_prefix": "/"}, "backends": [{"service": "b"}]}
    async with uvicorn_upstream() as a, uvicorn_upstream() as b:
        clusters = Clusters(clock=SystemClock())
        clusters.update("a", [endpoint(a)])
        clusters.update("b", [endpoint(b)])
        gw = gateway(config(r=old), clusters)
        async with running(gw) as client:

            async def load() -> list[int]:
                return [(await client.get("/x")).status_code for _ in range(40)]

            tasks = [asyncio.ensure_future(load()) for _ in range(4)]
            await asyncio.sleep(0.05)
            gw.swap(config("2", r=new))
            results = await asyncio.gather(*tasks)
            assert gw.pool.endpoint(("127.0.0.1", b)).acquired > 0
    assert all(status == 200 for batch in results for status in batch)


async def test_smuggled_request_never_reaches_the_upstream() -> None:
    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        with contextlib.suppress(Exception):
            while await reader.read(65536):
                pass

    async with raw_upstream(ok) as (up, seen):
        clusters = Clusters(clock=SystemClock())
        clusters.update("orders", [endpoint(up)])
        clusters.update("orders-canary", [endpoint(up)])
        server = ProxyServer(gateway(config(orders=MINIMAL), clusters))
        port = await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /orders HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            b"GET /orders/admin HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        await server.stop()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert seen == []


async def test_an_upstream_stopped_mid_load_costs_no_idempotent_request() -> None:
    route = {
        "match": {"path_prefix": "/"},
        "backends": [{"service": "svc"}],
        "retries": {"attempts": 3},
    }
    async with uvicorn_upstream() as steady:
        clusters = Clusters(clock=SystemClock())
        gw = gateway(config(r=route), clusters)
        async with running(gw) as client, contextlib.AsyncExitStack() as doomed_stack:
            doomed = await doomed_stack.enter_async_context(uvicorn_upstream())
            clusters.update("svc", [endpoint(steady, "steady"), endpoint(doomed, "doomed")])

            async def load() -> list[int]:
                return [(await client.get(f"/r{i}")).status_code for i in range(60)]

            tasks = [asyncio.ensure_future(load()) for _ in range(4)]
            await asyncio.sleep(0.1)
            await doomed_stack.aclose()  # the upstream goes away mid-load
            results = await asyncio.gather(*tasks)
    assert [s for batch in results for s in batch] == [200] * 240


async def test_a_client_leaving_mid_download_frees_the_upstream_connection() -> None:
    async with uvicorn_upstream() as up:
        clusters = Clusters(clock=SystemClock())
        clusters.update("svc", [endpoint(up)])
        route = {"match": {"path_prefix": "/"}, "backends": [{"service": "svc"}]}
        gw = gateway(config(r=route), clusters)
        server = ProxyServer(gw)
        port = await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /big?n=100000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        await reader.readexactly(1 << 20)
        writer.transport.abort()
        pool = gw.pool.endpoint(("127.0.0.1", up))
        for _ in range(200):
            if pool.active == 0:
                break
            await asyncio.sleep(0.01)
        await server.stop()
        gw.pool.close()
    assert pool.active == 0


async def test_response_header_edits_cors_and_route_body_limit() -> None:
    route = {
        "match": {"path_prefix": "/"},
        "backends": [{"service": "svc"}],
        "response_headers": {"set": {"x-served-by": "crossway"}, "remove": ["content-type"]},
        "cors": {"allow_origins": ["https://shop.example"]},
        "max_request_bytes": 10,
    }

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"12345"

    async with uvicorn_upstream() as up:
        clusters = Clusters(clock=SystemClock())
        clusters.update("svc", [endpoint(up)])
        async with running(gateway(config(r=route), clusters)) as client:
            answer = await client.get("/x", headers={"origin": "https://shop.example"})
            too_big = await client.post("/count", content=chunks())
            small = await client.post("/count", content=b"12345")
    assert answer.headers["x-served-by"] == "crossway"
    assert "content-type" not in answer.headers
    assert answer.headers["access-control-allow-origin"] == "https://shop.example"
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"
    assert small.text == "5"


async def test_mirroring_sends_a_shadow_copy_and_ignores_its_answer() -> None:
    route = {
        "match": {"path_prefix": "/"},
        "backends": [{"service": "svc"}],
        "mirror": {"service": "shadow", "percent": 100},
    }

    async def failing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with uvicorn_upstream() as up, raw_upstream(failing) as (shadow, seen):
        clusters = Clusters(clock=SystemClock())
        clusters.update("svc", [endpoint(up)])
        clusters.update("shadow", [endpoint(shadow)])
        async with running(gateway(config(r=route), clusters)) as client:
            answer = await client.get("/m", headers={"host": "shop"})
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
    assert answer.text == "hello /m"
    assert len(seen) == 1
    assert seen[0].startswith(b"GET /m HTTP/1.1\r\n")
    assert b"host: shop-shadow\r\n" in seen[0]


async def test_websocket_upgrade_is_tunnelled_both_ways() -> None:
    async def echo_upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        while data := await reader.read(65536):
            writer.write(data.upper())
            await writer.drain()

    route = {"match": {"path_prefix": "/ws"}, "backends": [{"service": "ws"}]}
    async with raw_upstream(echo_upper) as (up, seen):
        clusters = Clusters(clock=SystemClock())
        clusters.update("ws", [endpoint(up)])
        server = ProxyServer(gateway(config(r=route), clusters))
        port = await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /ws/chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\nfirst"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        first = await asyncio.wait_for(reader.readexactly(5), 5)
        writer.write(b"second")
        second = await asyncio.wait_for(reader.readexactly(6), 5)
        writer.close()
        await server.stop()
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"upgrade: websocket" in head.lower()
    assert (first, second) == (b"FIRST", b"SECOND")
    assert b"connection: upgrade\r\n" in seen[0]
    assert b"upgrade: websocket\r\n" in seen[0]


async def test_retriable_statuses_are_retried_on_another_endpoint() -> None:
    async def unavailable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
        await writer.drain()

    route = {
        "match": {"path_prefix": "/"},
        "backends": [{"service": "svc"}],
        "retries": {"attempts": 2, "conditions": ["gateway-error"]},
    }
    only_bad = {**route, "match": {"path_prefix": "/bad"}, "backends": [{"service": "bad"}]}
    async with uvicorn_upstream() as good, raw_upstream(unavailable) as (bad, _):
        clusters = Clusters(clock=SystemClock())
        clusters.update("svc", [endpoint(bad, "bad"), endpoint(good, "good")])
        clusters.update("bad", [endpoint(bad, "bad")])
        async with running(gateway(config(r=route, b=only_bad), clusters)) as client:
            gets = [await client.get(f"/g{i}") for i in range(6)]
            posts = [await client.post("/p", content=b"x") for _ in range(4)]
            last = await client.get("/bad/x")
    assert [r.status_code for r in gets] == [200] * 6
    assert 503 in [r.status_code for r in posts]  # a body is never replayed
    assert last.status_code == 503  # the last attempt's answer is relayed
    assert last.text == "busy"


async def test_per_try_timeout_bounds_the_wait_for_an_answer() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    route = {
        "match": {"path_prefix": "/"},
        "backends": [{"service": "svc"}],
        "timeout": "5s",
        "retries": {"attempts": 1, "per_try_timeout": "200ms"},
    }
    async with raw_upstream(silent) as (slow, _):
        clusters = Clusters(clock=SystemClock())
        clusters.update("svc", [endpoint(slow, "slow")])
        async with running(gateway(config(r=route), clusters)) as client:
            answer = await client.get("/t")
    assert answer.status_code == 504
    assert answer.headers["x-crossway-reason"] == "timeout"
    assert answer.elapsed.total_seconds() < 2
