"""Adversarial HTTP thrown at a running proxy: it answers 4xx (or forwards a
well-formed request), never crashes, and never forwards a smuggled request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.proxy.http1 import Body, EndOfRequest, RequestReceived, ServerConnection
from crossway.proxy.server import ProxyServer, ServerLimits
from crossway.proxy.upstream import UpstreamPool

from .test_server import make_handler

pytestmark = pytest.mark.integration

SMUGGLED = b"/smuggled"
CRLF = b"\r\n"

request_lines = st.sampled_from(
    [
        b"POST /in HTTP/1.1",
        b"GET /in HTTP/1.1",
        b"POST /in HTTP/1.0",
        b"GET /in HTTP/2.0",
        b"GET  /in HTTP/1.1",
        b"GET /in\x00 HTTP/1.1",
        b"GET /in HTTP/1.1 x",
        b"get /in HTTP/1.1",
        b"CONNECT in:1 HTTP/1.1",
    ]
)
fields = st.sampled_from(
    [
        b"Host: a",
        b"Host: b",
        b"Content-Length: 0",
        b"Content-Length: 5",
        b"Content-Length: 44",
        b"Content-Length: -1",
        b"Content-Length: 5, 5",
        b"Content-Length : 5",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: chunked, identity",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding:\tchunked",
        b"Transfer-Encoding: \x0bchunked",
        b" Transfer-Encoding: chunked",
        b"Transfer-Encoding\x00: chunked",
        b"X: a\r\n b",
        b"X: a\rb",
        b"X: a\nb",
        b"Connection: close",
        b"Connection: keep-alive, transfer-encoding",
        b"Expect: 100-continue",
        b"Upgrade: websocket",
    ]
)
bodies = st.sampled_from(
    [
        b"",
        b"hello",
        b"0\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
        b"ffffffffffffffffff\r\n",
        b"5;x\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
    ]
)
SMUGGLE_TAIL = b"GET " + SMUGGLED + b" HTTP/1.1\r\nHost: a\r\n\r\n"


@st.composite
def attacks(draw: st.DrawFn) -> bytes:
    line = draw(request_lines)
    head = CRLF.join([line, *draw(st.lists(fields, max_size=5))]) + CRLF + CRLF
    return head + draw(bodies) + SMUGGLE_TAIL


Request = tuple[bytes, bytes, bytes]  # method, target, body


def requests_in(data: bytes) -> list[Request]:
    """The complete requests a strict HTTP/1.1 reader finds in `data`, in order."""
    conn = ServerConnection(clock=VirtualClock())
    found: list[Request] = []
    current: list[bytes] = []
    head = None
    for event in conn.receive(data):
        if isinstance(event, RequestReceived):
            head, current = event.head, []
        elif isinstance(event, Body):
            current.append(event.data)
        elif isinstance(event, EndOfRequest) and head is not None:
            found.append((head.method, head.target, b"".join(current)))
    return found


PROBE = b"GET /probe HTTP/1.1\r\nHost: a\r\n\r\n"


def ends_at_boundary(data: bytes) -> bool:
    """Whether `data` holds only complete requests: a request appended to it
    is then read as itself (a body ending in any bytes at all is fine)."""
    found = requests_in(data + PROBE)
    return bool(found) and found[-1] == (b"GET", b"/probe", b"") and found[:-1] == requests_in(data)


class Recorded(bytearray):
    """What one upstream connection received, and whether the proxy closed it."""

    closed_by_proxy = False


@contextlib.asynccontextmanager
async def proxy_with_recorder() -> AsyncIterator[tuple[int, list[Recorded]]]:
    streams: list[Recorded] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = Recorded()
        streams.append(received)
        conn = ServerConnection(clock=VirtualClock())
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                received += data
                for event in conn.receive(data):
                    if isinstance(event, EndOfRequest):
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        received.closed_by_proxy = True  # end of stream or reset, not this task's cancellation
        writer.close()

    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    up_port = int(up.sockets[0].getsockname()[1])
    pool = UpstreamPool()
    # A short keep-alive timeout ends each example as soon as it is answered.
    server = ProxyServer(
        make_handler(up_port, pool, 1.0), limits=ServerLimits(keepalive_timeout=0.3)
    )
    port = await server.start("127.0.0.1", 0)
    try:
        yield port, streams
    finally:
        await server.stop()
        pool.close()
        up.close()


async def send(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    try:
        async with asyncio.timeout(3):
            return await reader.read(-1)
    except (TimeoutError, ConnectionError):
        return b""
    finally:
        writer.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attacks())
def test_adversarial_requests_never_smuggle(attack: bytes) -> None:
    async def scenario() -> tuple[bytes, list[Recorded], list[bool]]:
        async with proxy_with_recorder() as (port, streams):
            answer = await send(port, attack)
            await asyncio.sleep(0.05)  # a connection the proxy gives up on is closed by now
            # Read before the teardown closes every pooled connection.
            return answer, streams, [s.closed_by_proxy for s in streams]

    answer, streams, closed = asyncio.run(scenario())
    forwarded = [r for stream in streams for r in requests_in(bytes(stream))]
    # The upstream, reading strictly, sees exactly the requests the proxy
    # accepted from the client, with the same bodies: nothing more.
    assert forwarded == requests_in(attack)[: len(forwarded)]
    # And an upstream connection left mid-request (the client's body broke
    # off) is closed, never used again: open ones stop at a message boundary,
    # with no stray bytes to prefix whatever is sent on them next.
    for stream, was_closed in zip(streams, closed, strict=True):
        assert was_closed or ends_at_boundary(bytes(stream)), bytes(stream)
    statuses = [line.split(b" ")[1] for line in answer.split(b"\r\n") if line.startswith(b"HTTP/")]
    for status in statuses:
        assert status[:1] in (b"1", b"2", b"4", b"5"), answer


def test_a_valid_request_and_its_pipelined_successor_are_both_forwarded() -> None:
    attack = b"POST /in HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" + SMUGGLE_TAIL

    async def scenario() -> list[bytearray]:
        async with proxy_with_recorder() as (port, streams):
            await send(port, attack)
            return streams

    streams = asyncio.run(scenario())
    forwarded = [r for stream in streams for r in requests_in(bytes(stream))]
    assert forwarded == [(b"POST", b"/in", b"hello"), (b"GET", SMUGGLED, b"")]
