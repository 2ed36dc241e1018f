"""The gateway's fast path (fastpath.py): bodiless requests answered whole
by callbacks, and every way it falls back to the general path, against real
upstreams on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import httpx2
import pytest

from crossway.core.clock import SystemClock
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import decode_route
from crossway.proxy.server import Http1Stream
from crossway.proxy.telemetry import GatewayTelemetry
from crossway.proxy.upstream import UpstreamPool
from crossway.telemetry.traces.reporter import SpanReporter
from crossway.telemetry.traces.spans import Sampler

from .test_gateway import endpoint, running

pytestmark = pytest.mark.integration

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


@contextlib.asynccontextmanager
async def keepalive_upstream(answer: Answer) -> AsyncIterator[tuple[int, list[bytes]]]:
    """Serves request heads on each connection until `answer` returns False."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                if not await answer(head, writer):
                    break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1]), heads
    finally:
        server.close()


def path_of(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


async def echo_path(head: bytes, writer: asyncio.StreamWriter) -> bool:
    body = path_of(head)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    return True


def counted(route: dict[str, object], port: int) -> tuple[Gateway, list[bool]]:
    """A gateway whose fast-path decisions are recorded."""
    clusters = Clusters(clock=SystemClock())
    clusters.update("svc", [endpoint(port)])
    config = GatewayConfig({"r": decode_route(json.dumps(route))}, "1")
    gw = Gateway(config, clusters=clusters, pool=UpstreamPool())
    taken: list[bool] = []
    start = gw.start

    def recording(stream: Http1Stream) -> bool:
        before = sum(p.acquired for p in gw.pool.pools())
        began = start(stream)  # True and nothing taken from a pool: resumed to connect
        taken.append(began and sum(p.acquired for p in gw.pool.pools()) > before)
        return began

    gw.start = recording  # type: ignore[method-assign]
    return gw, taken


ROUTE: dict[str, object] = {
    "match": {"path_prefix": "/"},
    "backends": [{"service": "svc"}],
    "timeout": "2s",
}


async def test_keepalive_requests_take_the_fast_path_with_forwarding_headers() -> None:
    async with keepalive_upstream(echo_path) as (port, heads):
        gw, taken = counted(ROUTE, port)
        async with running(gw) as client:
            answers = [await client.get(f"/item/{i}?q={i}") for i in range(5)]
    assert [a.text for a in answers] == [f"/item/{i}?q={i}" for i in range(5)]
    assert taken[1:] == [True] * 4  # the first connects on the general path
    assert len(heads) == 5
    for head in heads[1:]:
        lowered = head.lower()
        assert b"\r\nx-forwarded-for: 127.0.0.1" in lowered
        assert b"\r\nvia: 1.1 " in lowered


async def test_an_answer_split_over_reads_falls_back_and_arrives_whole() -> None:
    async def slowly(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"56789")
        await writer.drain()
        return True

    async with keepalive_upstream(slowly) as (port, _):
        gw, _taken = counted(ROUTE, port)
        async with running(gw) as client:
            answers = [await client.get("/x") for _ in range(3)]
    assert [a.text for a in answers] == ["0123456789"] * 3


async def test_a_large_answer_is_streamed_by_the_fallback() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB: many reads

    async def large(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()
        return True

    async with keepalive_upstream(large) as (port, _):
        gw, _taken = counted(ROUTE, port)
        async with running(gw) as client:
            answers = [await client.get("/big") for _ in range(3)]
    assert all(a.content == body for a in answers)


async def test_a_chunked_answer_leaves_with_a_length() -> None:
    async def chunked(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        await writer.drain()
        return True

    async with keepalive_upstream(chunked) as (port, _):
        gw, _taken = counted(ROUTE, port)
        async with running(gw) as client:
            answers = [await client.get("/c") for _ in range(3)]
    assert [a.text for a in answers] == ["abcde"] * 3


async def test_a_silent_upstream_is_a_504_and_the_connection_serves_on() -> None:
    async def second_is_silent(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if path_of(head) == b"/silent":
            await asyncio.sleep(5)
        return await echo_path(head, writer)

    route = {**ROUTE, "timeout": "300ms"}
    async with keepalive_upstream(second_is_silent) as (port, _):
        gw, taken = counted(route, port)
        async with running(gw) as client:
            first = await client.get("/warm")
            silent = await client.get("/silent")
            after = await client.get("/after")
    assert first.status_code == 200
    assert taken[1] is True
    assert silent.status_code == 504
    assert silent.json()["error"]["code"] == "upstream_timeout"
    assert after.status_code == 200
    assert after.text == "/after"


async def test_a_stale_pooled_connection_is_tried_again_on_a_fresh_one() -> None:
    async def once_per_connection(head: bytes, writer: asyncio.StreamWriter) -> bool:
        await echo_path(head, writer)
        return False  # closes without saying so: the pooled connection is stale

    async with keepalive_upstream(once_per_connection) as (port, _heads):
        gw, _taken = counted(ROUTE, port)
        async with running(gw) as client:
            answers = []
            for i in range(4):
                answers.append(await client.get(f"/{i}"))
                await asyncio.sleep(0.02)  # the close reaches the pool, or not: both must work
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.text for a in answers] == [f"/{i}" for i in range(4)]


async def test_requests_arriving_during_a_fast_exchange_are_answered_in_order() -> None:
    async def slow_first(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if path_of(head) == b"/slow":
            await asyncio.sleep(0.1)
        return await echo_path(head, writer)

    async with keepalive_upstream(slow_first) as (port, _):
        gw, taken = counted(ROUTE, port)
        async with running(gw) as client:
            await client.get("/warm")  # an idle pooled connection for what follows
            assert client.base_url.port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", client.base_url.port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.03)  # /slow is in flight upstream
            writer.write(
                b"GET /next HTTP/1.1\r\nHost: a\r\n\r\nGET /last HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            await writer.drain()
            received = b""
            async with asyncio.timeout(5):
                while not received.endswith(b"/last"):
                    chunk = await reader.read(65536)
                    assert chunk, received
                    received += chunk
            writer.close()
    assert taken[1] is True  # /slow took the fast path
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1] for part in received.split(b"HTTP/1.1 200")[1:]]
    assert bodies == [b"/slow", b"/next", b"/last"]


async def test_round_robin_stays_fair_when_the_first_requests_must_connect() -> None:
    async with keepalive_upstream(echo_path) as (a, _), keepalive_upstream(echo_path) as (b, _):
        clusters = Clusters(clock=SystemClock())
        clusters.update("svc", [endpoint(a, "a"), endpoint(b, "b")])
        config = GatewayConfig({"r": decode_route(json.dumps(ROUTE))}, "1")
        gw = Gateway(config, clusters=clusters, pool=UpstreamPool())
        async with running(gw) as client:
            for _ in range(10):
                assert (await client.get("/")).status_code == 200
        served = {p.address[1]: p.acquired for p in gw.pool.pools()}
    assert served == {a: 5, b: 5}


async def test_each_concurrent_request_carries_its_own_trace_upstream() -> None:
    seen: dict[bytes, bytes] = {}

    async def record(head: bytes, writer: asyncio.StreamWriter) -> bool:
        fields = dict(
            line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:] if b": " in line
        )
        seen[path_of(head)] = fields[b"traceparent"].split(b"-")[1]
        await asyncio.sleep(0.01)  # keep several in flight at once
        return await echo_path(head, writer)

    async with keepalive_upstream(record) as (port, _):
        clusters = Clusters(clock=SystemClock())
        clusters.update("svc", [endpoint(port)])
        config = GatewayConfig({"r": decode_route(json.dumps(ROUTE))}, "1")
        reporter = SpanReporter(
            "http://cp",
            client=httpx2.AsyncClient(
                transport=httpx2.MockTransport(lambda _: httpx2.Response(202))
            ),
        )
        telemetry = GatewayTelemetry(clock=SystemClock(), reporter=reporter, sampler=Sampler(0.0))
        gw = Gateway(config, clusters=clusters, pool=UpstreamPool(), telemetry=telemetry)
        limits = httpx.Limits(max_keepalive_connections=8, max_connections=8)
        async with running(gw) as client:
            client._transport = httpx.AsyncHTTPTransport(limits=limits)
            for round_ in range(3):
                traces = {f"/{round_}/{i}": f"{round_ + 1:02x}{i + 1:030x}" for i in range(16)}
                answers = await asyncio.gather(
                    *(
                        client.get(path, headers={"traceparent": f"00-{trace}-{'1' * 16}-00"})
                        for path, trace in traces.items()
                    )
                )
                assert all(a.status_code == 200 for a in answers)
                for path, trace in traces.items():
                    assert seen[path.encode()] == trace.encode()


def two_upstreams_gateway(a: int, b: int, route: dict[str, object]) -> Gateway:
    clusters = Clusters(clock=SystemClock())
    clusters.update("svc", [endpoint(a, "a"), endpoint(b, "b")])
    config = GatewayConfig({"r": decode_route(json.dumps(route))}, "1")
    return Gateway(config, clusters=clusters, pool=UpstreamPool())


async def test_a_retriable_answer_on_the_fast_path_is_retried_on_the_other_endpoint() -> None:
    async def failing(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if path_of(head) == b"/flaky":
            writer.write(b"HTTP/1.1 503 Busy\r\ncontent-length: 4\r\n\r\nbusy")
            await writer.drain()
            return True
        return await echo_path(head, writer)

    route = {**ROUTE, "retries": {"attempts": 2}}  # gateway-error (502/503/504) by default
    async with keepalive_upstream(failing) as (a, a_heads), keepalive_upstream(echo_path) as (b, _):
        gw = two_upstreams_gateway(a, b, route)
        async with running(gw) as client:
            for _ in range(4):  # an idle pooled connection to each endpoint
                assert (await client.get("/warm")).status_code == 200
            answers = [await client.get("/flaky") for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    assert [a.text for a in answers] == ["/flaky"] * 6
    assert sum(path_of(h) == b"/flaky" for h in a_heads) >= 1  # some went to `a` first


async def test_a_per_try_timeout_on_the_fast_path_is_retried_on_the_other_endpoint() -> None:
    async def stalls(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if path_of(head) == b"/stall":
            await asyncio.sleep(2)
        return await echo_path(head, writer)

    route = {**ROUTE, "retries": {"attempts": 2, "per_try_timeout": "200ms"}}
    async with keepalive_upstream(stalls) as (a, _), keepalive_upstream(echo_path) as (b, _):
        gw = two_upstreams_gateway(a, b, route)
        async with running(gw) as client:
            for _ in range(4):
                assert (await client.get("/warm")).status_code == 200
            answers = [await client.get("/stall") for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4


async def test_a_client_gone_before_a_split_answer_frees_the_upstream_connection() -> None:
    async def split_late(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if path_of(head) != b"/late":
            return await echo_path(head, writer)
        await asyncio.sleep(0.2)  # the client leaves meanwhile
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nla")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"te")
        await writer.drain()
        return True

    async with keepalive_upstream(split_late) as (port, heads):
        gw, taken = counted(ROUTE, port)
        async with running(gw) as client:
            await client.get("/warm")
            assert client.base_url.port is not None
            _, writer = await asyncio.open_connection("127.0.0.1", client.base_url.port)
            writer.write(b"GET /late HTTP/1.1\r\nHost: a\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()  # gone while the answer is half here
            for _ in range(100):
                pool = gw.pool.pools()[0]
                if pool.active == pool.idle:
                    break
                await asyncio.sleep(0.02)
            assert pool.active == pool.idle  # nothing left in use
            after = await client.get("/after")
    assert taken[1] is True
    assert after.text == "/after"
    assert [path_of(h) for h in heads] == [b"/warm", b"/late", b"/after"]


async def test_a_client_that_half_closes_after_its_request_still_gets_the_answer() -> None:
    async def slow(head: bytes, writer: asyncio.StreamWriter) -> bool:
        if path_of(head) == b"/slow":
            await asyncio.sleep(0.1)
        return await echo_path(head, writer)

    async with keepalive_upstream(slow) as (port, _):
        gw, taken = counted(ROUTE, port)
        async with running(gw) as client:
            await client.get("/warm")
            assert client.base_url.port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", client.base_url.port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)  # the request is in flight upstream
            writer.write_eof()  # nothing more to send, the answer still wanted
            async with asyncio.timeout(5):
                received = await reader.read(-1)  # until the gateway closes
            writer.close()
    assert taken[1] is True
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"/slow")
