"""A route's `idle_timeout`: an exchange in which no byte moves either way
for that long ends (504 before the client saw a response, an abort after),
while a slow but steady one runs to its end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crossway.balance import Endpoint
from crossway.core.clock import SystemClock
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway, GatewayOptions
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import decode_route
from crossway.proxy.server import ProxyServer
from crossway.proxy.upstream import UpstreamConnection, UpstreamPool

from .upstreams import raw_upstream

pytestmark = pytest.mark.integration

IDLE = 0.3
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def route(**fields: Any) -> dict[str, Any]:
    return {"match": {"path_prefix": "/"}, "backends": [{"service": "svc"}], **fields}


@contextlib.asynccontextmanager
async def proxy(
    upstream: int, doc: dict[str, Any], options: GatewayOptions | None = None
) -> AsyncIterator[tuple[int, ProxyServer]]:
    clusters = Clusters(clock=SystemClock())
    clusters.update("svc", [Endpoint("up", "127.0.0.1", upstream)])
    config = GatewayConfig({"r": decode_route(json.dumps(doc))}, "1")
    pool = UpstreamPool()
    server = ProxyServer(Gateway(config, clusters=clusters, pool=pool, options=options))
    port = await server.start("127.0.0.1", 0)
    try:
        yield port, server
    finally:
        await server.stop()
        pool.close()


async def connect(port: int, request: bytes) -> Streams:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    return reader, writer


async def read_until_closed(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything until the peer closes or aborts (a reset ends it too)."""
    received = b""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionError):
            while piece := await reader.read(65536):
                received += piece
    return received


async def closed_by_peer(reader: asyncio.StreamReader, within: float = 5.0) -> None:
    """Reads (and drops) until the peer closes; fails if it does not within `within`."""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass


async def test_a_stalled_response_body_aborts_the_client_and_closes_the_upstream() -> None:
    upstream_closed = asyncio.Event()

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await closed_by_peer(reader)  # the gateway gives up on us
        upstream_closed.set()

    async with raw_upstream(stalls) as (up, _), proxy(up, route(idle_timeout="300ms")) as (port, _):
        started = time.monotonic()
        reader, writer = await connect(port, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        received = await read_until_closed(reader)
        elapsed = time.monotonic() - started
        writer.close()
        await asyncio.wait_for(upstream_closed.wait(), 5)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"x" * 10  # cut short: the client can tell it is incomplete
    assert IDLE * 0.9 <= elapsed < IDLE + 2


async def test_a_stalled_body_on_a_reused_connection_is_cut_too() -> None:
    # A bodiless request on a pooled connection starts on the gateway's fast
    # path; an answer that does not come whole continues on the general one.
    upstream_closed = asyncio.Event()

    async def stalls_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await closed_by_peer(reader)
        upstream_closed.set()

    doc = route(idle_timeout="300ms")
    async with raw_upstream(stalls_second) as (up, _), proxy(up, doc) as (port, _):
        reader, writer = await connect(port, b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await asyncio.wait_for(reader.readuntil(b"ok"), 5)
        started = time.monotonic()
        writer.write(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
        received = await read_until_closed(reader)
        elapsed = time.monotonic() - started
        writer.close()
        await asyncio.wait_for(upstream_closed.wait(), 5)
    assert first.startswith(b"HTTP/1.1 200")
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"\r\n\r\n" + b"x" * 10)
    assert IDLE * 0.9 <= elapsed < IDLE + 2


async def test_a_client_that_stalls_its_upload_gets_a_408() -> None:
    upstream_closed = asyncio.Event()

    async def reads_what_comes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await closed_by_peer(reader)  # never answers: waits for the whole body
        upstream_closed.set()

    async with (
        raw_upstream(reads_what_comes) as (up, _),
        proxy(up, route(idle_timeout="300ms", timeout="10s")) as (port, _),
    ):
        started = time.monotonic()
        reader, writer = await connect(
            port, b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"u" * 100
        )
        received = await read_until_closed(reader)
        elapsed = time.monotonic() - started
        writer.close()
        await asyncio.wait_for(upstream_closed.wait(), 5)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")  # the client's silence, not the upstream's
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert IDLE * 0.9 <= elapsed < IDLE + 2  # not the route's 10 s


async def test_an_upstream_that_stops_reading_the_upload_is_a_504_idle_timeout() -> None:
    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)  # neither reads the body nor answers

    size = 256 * 1024 * 1024  # far more than every socket buffer on the way holds
    async with (
        raw_upstream(never_reads) as (up, _),
        proxy(up, route(idle_timeout="300ms", timeout="10s")) as (port, _),
    ):
        head = f"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n"
        reader, writer = await connect(port, head.encode())

        async def send_body() -> None:
            block = b"u" * (1 << 20)
            with contextlib.suppress(ConnectionError):
                for _ in range(size // len(block)):
                    writer.write(block)
                    await writer.drain()

        sender = asyncio.get_running_loop().create_task(send_body())
        try:
            received = await read_until_closed(reader, within=10)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            writer.close()
    assert received.startswith(b"HTTP/1.1 504")
    assert b"x-crossway-reason: idle_timeout" in received.lower()


async def test_a_silent_websocket_tunnel_is_closed_both_ways() -> None:
    upstream_closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n")
        writer.write(b"Upgrade: websocket\r\n\r\n")
        await writer.drain()
        first = await reader.read(65536)
        writer.write(first.upper())  # one exchange of bytes, then silence
        await closed_by_peer(reader)
        upstream_closed.set()

    async with raw_upstream(silent) as (up, _), proxy(up, route(idle_timeout="300ms")) as (port, _):
        reader, writer = await connect(
            port,
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\nping",
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        echoed = await asyncio.wait_for(reader.readexactly(4), 5)
        started = time.monotonic()
        rest = await read_until_closed(reader)
        elapsed = time.monotonic() - started
        writer.close()
        await asyncio.wait_for(upstream_closed.wait(), 5)
    assert head.startswith(b"HTTP/1.1 101")
    assert (echoed, rest) == (b"PING", b"")
    assert IDLE * 0.8 <= elapsed < IDLE + 2


async def test_a_client_that_stops_reading_is_aborted() -> None:
    upstream_closed = asyncio.Event()

    async def floods(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"y" * 0x10000 + b"\r\n"
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                while True:  # until the gateway stops taking it and closes
                    writer.write(chunk)
                    await writer.drain()
        upstream_closed.set()

    async with (
        raw_upstream(floods) as (up, _),
        proxy(up, route(idle_timeout="300ms")) as (port, server),
    ):
        reader, writer = await connect(port, b"GET /flood HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        # The client reads no more: buffers fill, nothing moves.
        await asyncio.wait_for(upstream_closed.wait(), 5)
        for _ in range(100):
            if not server.connections:
                break
            await asyncio.sleep(0.02)
        assert not server.connections  # the client's connection was aborted
        writer.close()


async def test_slow_but_steady_streams_are_not_cut() -> None:
    pieces = 12

    async def trickles(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(pieces):
            await asyncio.sleep(IDLE / 3)
            writer.write(b"1\r\nz\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with (
        raw_upstream(trickles) as (up, _),
        proxy(up, route(idle_timeout="300ms")) as (port, _),
    ):
        started = time.monotonic()
        reader, writer = await connect(port, b"GET /trickle HTTP/1.0\r\nHost: a\r\n\r\n")
        received = await read_until_closed(reader, within=10)
        elapsed = time.monotonic() - started
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"z" * pieces
    assert elapsed > 3 * IDLE  # the whole exchange took far longer than the idle timeout


async def test_slow_but_steady_uploads_are_not_cut() -> None:
    pieces = 12

    async def counts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await reader.readexactly(pieces)
        answer = str(len(body)).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()

    async with raw_upstream(counts) as (up, _), proxy(up, route(idle_timeout="300ms")) as (port, _):
        head = f"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {pieces}\r\n\r\n"
        reader, writer = await connect(port, head.encode())
        for _ in range(pieces):
            await asyncio.sleep(IDLE / 3)
            writer.write(b"u")
            await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        body = await asyncio.wait_for(reader.readexactly(2), 5)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert body == b"12"


async def test_the_head_wait_keeps_its_own_timeout() -> None:
    async def thinks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3 * IDLE)  # longer than the idle timeout, within the route's
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    doc = route(idle_timeout="300ms", timeout="5s")
    async with raw_upstream(thinks) as (up, _), proxy(up, doc) as (port, _):
        reader, writer = await connect(port, b"GET /think HTTP/1.0\r\nHost: a\r\n\r\n")
        received = await read_until_closed(reader)
        writer.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"\r\n\r\nok")


async def test_without_a_route_idle_timeout_the_gateway_default_applies() -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nxx")
        await writer.drain()
        await closed_by_peer(reader)

    options = GatewayOptions(default_idle_timeout=IDLE)
    async with raw_upstream(stalls) as (up, _), proxy(up, route(), options) as (port, _):
        started = time.monotonic()
        reader, writer = await connect(port, b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        received = await read_until_closed(reader)
        elapsed = time.monotonic() - started
        writer.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"\r\n\r\nxx")
    assert elapsed < IDLE + 2


async def test_keep_alive_requests_do_not_make_a_timer_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:  # the first head was read already (raw_upstream)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")

    loop = asyncio.get_running_loop()
    call_at = loop.call_at
    made: list[float] = []

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__func__", None) is UpstreamConnection._on_timer:
            made.append(when)
        return call_at(when, callback, *args, **kwargs)

    # An idle timeout shorter than the head's: the two deadlines alternate.
    doc = route(idle_timeout="1s", timeout="5s", retries={"attempts": 2})  # the general path
    async with raw_upstream(answers) as (up, _), proxy(up, doc) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        monkeypatch.setattr(loop, "call_at", counting)
        requests = 200
        for _ in range(requests):
            writer.write(b"GET /k HTTP/1.1\r\nHost: a\r\n\r\n")
            await reader.readuntil(b"hello")
        monkeypatch.undo()
        writer.close()
    print(f"{len(made)} timers for {requests} requests")
    assert len(made) <= 4, len(made)
