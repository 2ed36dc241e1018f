"""One request through gateway -> service A -> service B (both with the SDK)
is one trace in the control plane, and the golden signals show both edges.

A real control plane and a real `crossway gateway` run as processes; A and B
are FastAPI apps served by uvicorn in this process, each with its own
`crossway.Client` pushing every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
import uvicorn
from fastapi import FastAPI, Request

from crossway.sdk.asgi import CrosswayMiddleware, lifespan
from crossway.sdk.client import Client
from crossway.telemetry.tracecontext import current_trace
from crossway.testing.server import CrosswayServer, start_server
from crossway.testing.services import free_port

pytestmark = pytest.mark.integration

T = TypeVar("T")


def make_service(name: str, port: int, cp: CrosswayServer, cache: Path) -> FastAPI:
    client = Client(
        service=name,
        port=port,
        address="127.0.0.1",
        url=cp.url,
        cache_dir=cache / name,
        stats_interval=1.0,
        ttl="5s",
    )

    @contextlib.asynccontextmanager
    async def calls_b(app: FastAPI) -> AsyncIterator[None]:
        async with client.http() as http:  # made once the client runs, closed before it stops
            app.state.b_http = http
            yield

    app = FastAPI(lifespan=lifespan(client, calls_b))
    app.add_middleware(CrosswayMiddleware, client=client)

    @app.get("/hello/{who}")
    async def hello(who: str) -> dict[str, Any]:
        return {"hello": who}

    @app.get("/a/{who}")
    async def call_b(who: str, request: Request) -> dict[str, Any]:
        answer = await request.app.state.b_http.get(f"http://b/hello/{who}")
        trace = current_trace()
        assert trace is not None
        return {"b": answer.json(), "trace_id": trace.trace_id}

    return app


@contextlib.asynccontextmanager
async def serving(app: FastAPI, port: int) -> AsyncIterator[None]:
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


@contextlib.contextmanager
def gateway_process(cp: CrosswayServer, port: int, admin: int, log: Path) -> Iterator[None]:
    crossway = Path(sys.executable).parent / "crossway"
    args = [str(crossway), "gateway", "--control-plane", cp.url, "--host", "127.0.0.1"]
    args += ["--port", str(port), "--admin-port", str(admin), "--stats-interval", "1s"]
    env = {**os.environ, "CROSSWAY_GATEWAY_ACCESS_LOG": "off"}
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def eventually(probe: Callable[[], Awaitable[T | None]], *, timeout: float, what: str) -> T:
    """Poll `probe` every 0.2 s until it returns something (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await probe()
        if found is not None:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.fixture
def control_plane() -> Iterator[CrosswayServer]:
    server = start_server(store="sqlite")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(120)
async def test_one_request_through_the_gateway_is_one_trace_and_two_edges(
    control_plane: CrosswayServer, tmp_path: Path
) -> None:
    cp = control_plane
    port_a, port_b, gw_port, gw_admin = free_port(), free_port(), free_port(), free_port()
    route = {"match": {"path_prefix": "/a"}, "backends": [{"service": "a"}]}
    async with httpx2.AsyncClient(base_url=cp.url, timeout=10) as api:
        assert (await api.put("/v1/routes/to-a", json=route)).status_code in (200, 201)
        app_b = make_service("b", port_b, cp, tmp_path)
        app_a = make_service("a", port_a, cp, tmp_path)
        with gateway_process(cp, gw_port, gw_admin, tmp_path / "gateway.log"):
            async with (
                serving(app_b, port_b),
                serving(app_a, port_a),
                httpx2.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}", timeout=10) as gw,
            ):

                async def through_gateway() -> httpx2.Response | None:
                    with contextlib.suppress(httpx2.TransportError):
                        response = await gw.get("/a/world")
                        if response.status_code == 200:
                            return response
                    return None

                answer = await eventually(through_gateway, timeout=30, what="the gateway route")
                body = answer.json()
                assert body["b"] == {"hello": "world"}
                trace_id = body["trace_id"]

                async def whole_trace() -> list[dict[str, Any]] | None:
                    response = await api.get(f"/api/v2/trace/{trace_id}")
                    if response.status_code != 200:
                        return None
                    spans: list[dict[str, Any]] = response.json()
                    return spans if len(spans) >= 4 else None

                spans = await eventually(whole_trace, timeout=20, what="four spans of the trace")

                def edges_seen() -> Callable[[], Awaitable[set[tuple[str, str]] | None]]:
                    async def probe() -> set[tuple[str, str]] | None:
                        rows = (await api.get("/v1/edges", params={"window": "1m"})).json()
                        found = {(r.get("caller"), r.get("service")) for r in _rows(rows)}
                        return found if {("gateway", "a"), ("a", "b")} <= found else None

                    return probe

                edges = await eventually(edges_seen(), timeout=40, what="both edges")
                stats_a = (await api.get("/v1/stats", params={"service": "a"})).json()
    assert {("gateway", "a"), ("a", "b")} <= edges
    by_role = {(s["localEndpoint"]["serviceName"], s["kind"]): s for s in spans}
    assert set(by_role) == {
        ("gateway", "SERVER"),
        ("a", "SERVER"),
        ("a", "CLIENT"),
        ("b", "SERVER"),
    }, spans
    gateway = by_role[("gateway", "SERVER")]
    a_server, a_client = by_role[("a", "SERVER")], by_role[("a", "CLIENT")]
    b_server = by_role[("b", "SERVER")]
    assert "parentId" not in gateway  # the client sent no context: the gateway started it
    assert a_server["parentId"] == gateway["id"]
    assert a_client["parentId"] == a_server["id"]
    assert b_server["parentId"] == a_client["id"]
    assert {s["traceId"] for s in spans} == {trace_id}
    assert gateway["tags"]["peer.service"] == "a"
    assert a_server["tags"]["http.route"] == "/a/{who}"
    assert b_server["tags"]["http.route"] == "/hello/{who}"
    assert a_client["remoteEndpoint"]["serviceName"] == "b"
    assert _total_requests(stats_a) >= 1


def _rows(answer: Any) -> list[dict[str, Any]]:
    if isinstance(answer, list):
        return answer
    for key in ("rows", "edges", "stats"):
        if isinstance(answer.get(key), list):
            return list(answer[key])
    return []


def _total_requests(answer: Any) -> int:
    total = answer.get("total") if isinstance(answer, dict) else None
    if isinstance(total, dict):
        return int(total.get("requests", 0))
    return sum(int(r.get("requests", 0)) for r in _rows(answer))
