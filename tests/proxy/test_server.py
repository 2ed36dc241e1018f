from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from crossway.proxy.errors import GatewayError, render
from crossway.proxy.forward import forward
from crossway.proxy.headers import ForwardingPolicy
from crossway.proxy.http1 import Limits
from crossway.proxy.server import ProxyServer, ServerLimits
from crossway.proxy.stream import ClientBodyError, Stream
from crossway.proxy.upstream import PoolLimits, UpstreamPool

from .upstreams import exchange, raw_upstream, uvicorn_upstream

pytestmark = pytest.mark.integration


def http(port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")


def make_handler(port: int, pool: UpstreamPool, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    async def handler(stream: Stream) -> None:
        try:
            await forward(
                stream,
                ("127.0.0.1", port),
                pool=pool,
                policy=ForwardingPolicy(),
                timeout=timeout,
            )
        except GatewayError as error:
            stream.send_local(render(error))
        except ClientBodyError as error:
            if not stream.response_started:
                stream.send_local(render(GatewayError(error.rejected.detail)), close=True)

    return handler


@contextlib.asynccontextmanager
async def gateway(
    port: int,
    *,
    timeout: float = 5.0,
    limits: ServerLimits | None = None,
    pool_limits: PoolLimits | None = None,
) -> AsyncIterator[tuple[int, UpstreamPool]]:
    pool = UpstreamPool(limits=pool_limits)
    server = ProxyServer(make_handler(port, pool, timeout), limits=limits)
    listen = await server.start("127.0.0.1", 0)
    try:
        yield listen, pool
    finally:
        await server.stop()
        pool.close()


async def test_get_and_post_through_the_proxy_reuse_connections() -> None:
    async with (
        uvicorn_upstream() as up,
        gateway(up) as (port, pool),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        for i in range(5):
            response = await client.get(f"/hello/{i}")
            assert response.status_code == 200
            assert response.text == f"hello /hello/{i}"
            assert response.headers["via"] == "1.1 crossway"
        posted = await client.post("/echo", content=b"payload" * 1000)
        assert posted.content == b"payload" * 1000
        endpoint = pool.endpoint(("127.0.0.1", up))
        assert endpoint.active == 1  # one upstream connection served all six


async def test_forwarding_headers_reach_the_upstream() -> None:
    async with (
        uvicorn_upstream() as up,
        gateway(up) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        response = await client.get(
            "/headers", headers={"connection": "keep-alive, x-drop", "x-drop": "1"}
        )
    seen = response.text.split("\n")
    assert "x-forwarded-for: 127.0.0.1" in seen
    assert "x-forwarded-proto: http" in seen
    assert not any(line.startswith("x-drop") for line in seen)


async def test_chunked_upload_and_streamed_download() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(50):
            yield b"z" * 10_000

    async with (
        uvicorn_upstream() as up,
        gateway(up) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        counted = await client.post("/count", content=chunks())
        assert counted.text == "500000"
        big = await client.get("/big?n=3000000")
        assert len(big.content) == 3_000_000
        assert big.headers["transfer-encoding"] == "chunked"


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with uvicorn_upstream() as up, gateway(up) as (port, _):
        raw = (
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        answer = await exchange(port, raw)
    assert answer.count(b"HTTP/1.1 200 OK") == 3
    assert answer.index(b"hello /one") < answer.index(b"hello /two") < answer.index(b"hello /three")


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    async with uvicorn_upstream() as up, gateway(up) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /count HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"abcd")
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert final.startswith(b"HTTP/1.1 200")
        writer.close()


SMUGGLES = [
    b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n"
    b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /count HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /count HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n"
    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
]


@pytest.mark.parametrize("attack", SMUGGLES)
async def test_smuggling_attempts_get_400_and_reach_nothing(attack: bytes) -> None:
    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    async with raw_upstream(ok) as (up, seen), gateway(up) as (port, _):
        answer = await exchange(port, attack)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "bad_request"
    assert seen == []


async def test_limits_answer_414_431_413() -> None:
    limits = ServerLimits(parse=Limits(max_uri_bytes=100, max_head_bytes=500, max_body_bytes=10))
    async with uvicorn_upstream() as up, gateway(up, limits=limits) as (port, _):
        long_uri = await exchange(port, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
        big_head = await exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"b" * 600)
        big_body = await exchange(
            port, b"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
        )
    assert long_uri.startswith(b"HTTP/1.1 414 ")
    assert big_head.startswith(b"HTTP/1.1 431 ")
    assert big_body.startswith(b"HTTP/1.1 413 ")


async def test_connect_failure_is_502_with_reason() -> None:
    sock_port = 1  # nothing listens on port 1 on loopback
    async with (
        gateway(sock_port) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        response = await client.get("/")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_connect_failed"
    assert response.headers["x-crossway-reason"] == "connect_failure"


async def test_slow_upstream_is_504() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2)

    async with (
        raw_upstream(slow) as (up, _),
        gateway(up, timeout=0.2) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        response = await client.get("/")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


async def test_upstream_reset_is_502() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    async with (
        raw_upstream(hang_up) as (up, _),
        gateway(up) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        response = await client.get("/")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_reset"


async def test_truncated_upstream_body_aborts_the_client() -> None:
    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a bit")
        await writer.drain()

    async with (
        raw_upstream(truncate) as (up, _),
        gateway(up) as (port, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        with pytest.raises(httpx.HTTPError):
            await client.get("/")


async def test_header_timeout_answers_408() -> None:
    limits = ServerLimits(parse=Limits(header_timeout=0.2))
    async with uvicorn_upstream() as up, gateway(up, limits=limits) as (port, _):
        answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_the_proxy_runs_on_uvloop() -> None:
    import uvloop

    async def scenario() -> tuple[int, bytes]:
        async with uvicorn_upstream() as up, gateway(up) as (port, _), http(port) as client:
            got = await client.get("/uv")
            posted = await client.post("/echo", content=b"abc" * 1000)
            return got.status_code, posted.content

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        status, echoed = runner.run(scenario())
    assert status == 200
    assert echoed == b"abc" * 1000
