"""`POST /v1/leases/keepalive/stream` against real control planes, and the SDK on it.

The server side runs in a `crossway server` process (sqlite and memory
stores): every exchange goes over a real socket, with the request body still
open while the answers stream back (uvicorn's httptools protocol
interleaving `receive` and `send`). The fallback to PUT is shown against an
in-process app built without the stream route.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp

from crossway.registry import Catalog, Registry
from crossway.sdk import Client
from crossway.sdk.control import ControlPlane, ControlPlaneError, ControlPlaneUnavailable
from crossway.sdk.keepalive_stream import STREAM_PATH, DuplexStream, KeepaliveChannel
from crossway.sdk.settings import ClientSettings
from crossway.server.api import registry, system
from crossway.server.api.registry import KeepaliveStream
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.run import CorkedHttpProtocol, bind_socket
from crossway.server.settings import ServerSettings
from crossway.store.local import LocalStore
from crossway.store.memory import open_memory_store
from crossway.testing.server import CrosswayServer, start_server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PUT_KEEPALIVE = "/v1/leases/{lease}/keepalive"


@pytest.fixture(scope="module", params=["sqlite", "memory"])
def server(request: pytest.FixtureRequest) -> Iterator[CrosswayServer]:
    running = start_server(store=request.param)
    yield running
    assert running.stop() == 0, running.log()[-2000:]


@pytest.fixture
async def http(server: CrosswayServer) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


def unique(name: str) -> str:
    return f"{name}-{time.monotonic_ns() % 10**9}"


async def register(http: httpx2.AsyncClient, service: str, iid: str, ttl: str = "30s") -> str:
    response = await http.put(
        f"/v1/services/{service}/instances/{iid}",
        json={"address": "127.0.0.1", "port": 8080, "ttl": ttl},
    )
    assert response.status_code == 200, response.text
    lease: str = response.json()["lease"]
    return lease


class Lines:
    """The response side of a stream, read line by line."""

    def __init__(self, duplex: DuplexStream) -> None:
        self.duplex = duplex
        self.buffer = b""
        self.ended = False

    async def next(self, timeout: float = 5.0) -> str | None:
        """The next line, or None when the response has ended."""
        async with asyncio.timeout(timeout):
            while b"\n" not in self.buffer:
                piece = await self.duplex.receive()
                if piece is None:
                    self.ended = True
                    return None
                self.buffer += piece
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    async def take(self, count: int) -> list[str]:
        taken: list[str] = []
        for _ in range(count):
            line = await self.next()
            assert line is not None, f"the stream ended after {taken}"
            taken.append(line)
        return taken


@contextlib.asynccontextmanager
async def stream(url: str) -> AsyncIterator[Lines]:
    duplex = await DuplexStream.open(url + STREAM_PATH, [])
    try:
        yield Lines(duplex)
    finally:
        duplex.abort()


async def in_flight(http: httpx2.AsyncClient) -> float:
    metrics = (await http.get("/metrics")).text
    found = re.search(r"^http_server_requests_in_flight (\S+)$", metrics, re.M)
    assert found, "no in-flight gauge"
    return float(found.group(1))


def put_keepalives(metrics: str) -> float:
    """Requests counted on the PUT keepalive route in a /metrics page."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("http_server_requests_total{") and f'route="{PUT_KEEPALIVE}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# The endpoint


async def test_renews_while_the_body_is_still_open(
    server: CrosswayServer, http: httpx2.AsyncClient
) -> None:
    service = unique("streamed")
    lease = await register(http, service, "s-1", ttl="2s")
    async with stream(server.url) as lines:
        # Each answer arrives before the next line is sent: receive and send interleave.
        for _ in range(8):
            await lines.duplex.send(f"{lease}\n".encode())
            assert await lines.next() == f"{lease} 2"
            await asyncio.sleep(0.4)
        # 3.2 s on a 2 s lease: only the stream kept it alive.
        instances = (await http.get(f"/v1/services/{service}")).json()
        assert [i["id"] for i in instances] == ["s-1"]


async def test_unknown_lease_is_missing_and_bad_lines_do_not_end_the_stream(
    server: CrosswayServer, http: httpx2.AsyncClient
) -> None:
    lease = await register(http, unique("mixed"), "m-1")
    async with stream(server.url) as lines:
        await lines.duplex.send(b"7fffffff0000abcd\nnot-a-lease\n\n0\r\n")
        assert await lines.take(3) == [
            "7fffffff0000abcd missing",
            "not-a-lease invalid",
            "0 invalid",  # out of range
        ]
        await lines.duplex.send(f"{lease}\n".encode())
        assert await lines.next() == f"{lease} 30"


async def test_many_chunks_with_lines_split_across_them(
    server: CrosswayServer, http: httpx2.AsyncClient
) -> None:
    service = unique("chunks")
    leases = [await register(http, service, f"c-{i}") for i in range(20)]
    text = "".join(f"{lease}\n" for lease in leases * 5).encode()
    async with stream(server.url) as lines:
        for start in range(0, len(text), 7):  # 7-byte chunks cut most ids in two
            await lines.duplex.send(text[start : start + 7])
        answers = await lines.take(100)
    assert answers == [f"{lease} 30" for lease in leases * 5]


async def test_a_finished_body_ends_the_response(
    server: CrosswayServer, http: httpx2.AsyncClient
) -> None:
    lease = await register(http, unique("finish"), "f-1")
    async with stream(server.url) as lines:
        await lines.duplex.send(lease.encode())  # the last line needs no newline
        await lines.duplex.finish()
        assert await lines.next() == f"{lease} 30"
        assert await lines.next() is None


async def test_an_overlong_line_closes_the_stream(server: CrosswayServer) -> None:
    async with stream(server.url) as lines:
        await lines.duplex.send(b"a" * 65)
        note = await lines.next()
        assert note is not None
        assert note.startswith("# closing: a line is longer than 64")
        assert await lines.next() is None


async def test_a_client_gone_mid_stream_leaves_nothing_behind(
    server: CrosswayServer, http: httpx2.AsyncClient
) -> None:
    lease = await register(http, unique("gone"), "g-1")
    baseline = await in_flight(http)
    for _ in range(5):
        async with stream(server.url) as lines:
            await lines.duplex.send(f"{lease}\n{lease[:5]}".encode())  # a partial line left
            assert await lines.next() == f"{lease} 30"
    for _ in range(100):
        if await in_flight(http) == baseline:
            break
        await asyncio.sleep(0.05)
    assert await in_flight(http) == baseline


async def test_server_shutdown_ends_the_stream_cleanly() -> None:
    server = await asyncio.to_thread(start_server, store="memory")
    try:
        async with httpx2.AsyncClient(base_url=server.url) as http:
            lease = await register(http, unique("shutdown"), "d-1")
        async with stream(server.url) as lines:
            await lines.duplex.send(f"{lease}\n".encode())
            assert await lines.next() == f"{lease} 30"
            started = time.monotonic()
            stopping = asyncio.ensure_future(asyncio.to_thread(server.stop))
            note = await lines.next()
            assert note is not None
            assert "shutting down" in note
            assert await lines.next() is None
            assert await stopping == 0
            assert time.monotonic() - started < 5.0  # not held up by the open stream
    finally:
        server.stop()


# The SDK


async def test_a_client_renews_on_the_stream_not_by_put(
    server: CrosswayServer, http: httpx2.AsyncClient, tmp_path: Path
) -> None:
    service = unique("sdk")
    before = put_keepalives((await http.get("/metrics")).text)
    client = Client(url=server.url, service=service, port=9000, ttl="1s", cache_dir=tmp_path)
    async with client:
        await asyncio.sleep(2.5)  # a keepalive every ~0.3 s
        instances = (await http.get(f"/v1/services/{service}")).json()
        assert [i["id"] for i in instances] == [client.instance_id]
        assert client.keepalives.stream_renewals >= 4
        assert client.keepalives.put_renewals == 0
        assert client.registrations == 1
    assert put_keepalives((await http.get("/metrics")).text) == before


async def test_a_client_registers_again_after_missing(
    server: CrosswayServer, http: httpx2.AsyncClient, tmp_path: Path
) -> None:
    service = unique("again")
    async with Client(
        url=server.url, service=service, port=9000, ttl="1s", cache_dir=tmp_path
    ) as client:
        first = client.lease
        response = await http.delete(f"/v1/services/{service}/instances/{client.instance_id}")
        assert response.status_code == 200  # its lease went with it
        for _ in range(60):
            if client.registrations == 2:
                break
            await asyncio.sleep(0.05)
        assert client.registrations == 2
        assert client.lease != first
        assert client.keepalives.put_renewals == 0


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """`app` on uvicorn's httptools protocol, corked as `crossway server` runs
    it, on a free loopback port in this event loop; yields its URL."""
    config = uvicorn.Config(app, http=CorkedHttpProtocol, lifespan="off", log_config=None)
    config.load()
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign, assignment]
    with bind_socket("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        for _ in range(200):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task


@contextlib.asynccontextmanager
async def app_without_stream() -> AsyncIterator[str]:
    """A control plane whose registry API lacks the stream route (an older
    version), served in this event loop."""

    def older_registry(ctx: ServerContext) -> list[BaseRoute]:
        routes = registry.routes(ctx)
        return [r for r in routes if not (isinstance(r, Route) and r.path == STREAM_PATH)]

    ctx = ServerContext(store=open_memory_store(), settings=ServerSettings(store="memory"))
    app = create_app(ctx, providers=[system.routes, older_registry])
    await ctx.start()
    try:
        async with serving(app) as url:
            yield url
    finally:
        await ctx.close()


@contextlib.asynccontextmanager
async def bare_stream(**options: float) -> AsyncIterator[tuple[str, LocalStore, asyncio.Event]]:
    """Only the stream endpoint, over a memory store, with `options` (idle, max_line)."""
    store = open_memory_store()
    catalog = Catalog(store)
    await catalog.start()
    reg, stopping = Registry(store, catalog), asyncio.Event()
    endpoint = KeepaliveStream(reg, stopping, **options)  # type: ignore[arg-type]
    try:
        async with serving(Router([Route(STREAM_PATH, endpoint, methods=["POST"])])) as url:
            yield url, store, stopping
    finally:
        stopping.set()
        await catalog.stop()
        await store.close()


async def test_an_idle_stream_is_closed() -> None:
    async with bare_stream(idle=0.3) as (url, _, _), stream(url) as lines:
        started = time.monotonic()
        note = await lines.next()
        assert note == "# closing: idle for 0.3s"
        assert await lines.next() is None
        assert time.monotonic() - started < 3.0


async def test_the_event_of_shutdown_ends_an_open_stream() -> None:
    async with bare_stream() as (url, _, stopping), stream(url) as lines:
        await lines.duplex.send(b"abc\n")
        assert await lines.next() == "abc missing"
        stopping.set()
        assert await lines.next() == "# closing: the server is shutting down; reconnect"
        assert await lines.next() is None


async def test_a_channel_renews_on_a_fresh_stream_after_the_server_ends_one(
    tmp_path: Path,
) -> None:
    async with bare_stream() as (url, store, stopping):
        lease = (await store.grant(30)).id
        settings = ClientSettings(url=url, cache_dir=tmp_path)
        async with ControlPlane(settings) as control:
            channel = KeepaliveChannel(control)
            assert await channel.renew(f"{lease:x}", timeout=2) == 30
            stopping.set()  # every stream ends now, and any new one at once
            with pytest.raises(ControlPlaneUnavailable):
                await channel.renew(f"{lease:x}", timeout=2)  # no PUT route here either
            stopping.clear()
            assert await channel.renew(f"{lease:x}", timeout=2) == 30
            assert (channel.stream_renewals, channel.put_renewals) == (2, 0)
            await channel.aclose()


async def test_concurrent_renewals_share_one_stream(tmp_path: Path) -> None:
    async with bare_stream() as (url, store, _):
        leases = [f"{(await store.grant(20 + i)).id:x}" for i in range(10)]
        async with ControlPlane(ClientSettings(url=url, cache_dir=tmp_path)) as control:
            channel = KeepaliveChannel(control)
            ttls = await asyncio.gather(*(channel.renew(x, timeout=3) for x in leases * 2))
            assert ttls == [20.0 + i for i in range(10)] * 2
            with pytest.raises(ControlPlaneError) as refused:
                await channel.renew("7fffffff0000abcd", timeout=3)
            assert (refused.value.status, refused.value.code) == (404, "lease_not_found")
            assert (channel.streams_opened, channel.stream_renewals) == (1, 21)
            await channel.aclose()


async def test_a_channel_uses_put_while_the_stream_cannot_be_opened(tmp_path: Path) -> None:
    with bind_socket("127.0.0.1", 0) as sock:  # bound, never listening: refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with ControlPlane(ClientSettings(url=url, cache_dir=tmp_path)) as control:
            channel = KeepaliveChannel(control)
            with pytest.raises(ControlPlaneUnavailable):
                await channel.renew("abc", timeout=2)
            assert (channel.stream_renewals, channel.put_renewals) == (0, 1)
            await channel.aclose()


async def test_a_client_falls_back_to_put_without_the_stream(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(app_without_stream())
        c = Client(url=url, service="older", port=9000, ttl="1s", cache_dir=tmp_path)
        await stack.enter_async_context(c)
        await asyncio.sleep(1.5)
        assert c.keepalives.put_renewals >= 3
        assert c.keepalives.stream_renewals == 0
        assert c.registrations == 1
        async with httpx2.AsyncClient(base_url=url) as http:
            instances: list[dict[str, Any]] = (await http.get("/v1/services/older")).json()
        assert [i["id"] for i in instances] == [c.instance_id]
