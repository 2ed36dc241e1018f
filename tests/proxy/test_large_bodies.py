"""A 1 GiB body each way through a gateway process, in bounded memory.

The gateway runs as its own process (one route to one upstream endpoint) so
its resident memory can be read from /proc while the bytes flow; the
upstream and the client are raw asyncio streams in the test process. The
upload is sent with a Content-Length and counted by the upstream; the
download is streamed by the upstream and counted by the client. Either way
the gateway's RSS may not grow by more than 50 MB over what it used after a
first small exchange: flow control (flow.py) must hold the relay to a few
buffers whatever the body's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from crossway.testing.services import free_port, port_open

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

GIB = 1 << 30
PIECE = 1 << 20  # what the client and the upstream write at a time
RSS_BUDGET = 50 * 1024 * 1024

GATEWAY = """
import asyncio, sys
import uvloop
from crossway.balance import Endpoint
from crossway.core.clock import SystemClock
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import route_from_object
from crossway.proxy.server import ProxyServer
from crossway.proxy.upstream import UpstreamPool

async def main(port, upstream):
    clock = SystemClock()
    route = route_from_object({"match": {"path_prefix": "/"}, "backends": [{"service": "up"}],
                               "timeout": "60s"})
    clusters = Clusters(clock=clock)
    clusters.update("up", [Endpoint("up-0", "127.0.0.1", upstream)])
    gateway = Gateway(GatewayConfig({"all": route}), clusters=clusters,
                      pool=UpstreamPool(clock=clock))
    await ProxyServer(gateway, clock=clock).start("127.0.0.1", port)
    await asyncio.Event().wait()

uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """POST /upload: count the body, answer the count. GET /download?n=N: N bytes."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            target = head.split(" ", 2)[1]
            if target.startswith("/download"):
                await _send_body(writer, int(target.split("n=")[1]))
                continue
            length = int(_header(head, "content-length") or 0)
            received = 0
            while received < length:
                received += len(await reader.read(min(PIECE, length - received)))
            answer = str(received).encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(answer), answer))
            await writer.drain()
    writer.close()


async def _send_body(writer: asyncio.StreamWriter, size: int) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
    piece = bytes(PIECE)
    sent = 0
    while sent < size:
        chunk = piece[: min(PIECE, size - sent)]
        writer.write(chunk)
        sent += len(chunk)
        await writer.drain()


def _header(head: str, name: str) -> str | None:
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


@contextlib.asynccontextmanager
async def gateway_process() -> AsyncIterator[tuple[int, int]]:
    """(gateway port, gateway pid), with the upstream served in this process."""
    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    upstream_port = server.sockets[0].getsockname()[1]
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", GATEWAY, str(port), str(upstream_port)])
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            assert process.poll() is None, "the gateway process exited"
            assert time.monotonic() < deadline, "the gateway never listened"
            await asyncio.sleep(0.05)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)
        server.close()
        await server.wait_closed()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """(status, content length) of a response head."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    return int(head.split(" ", 2)[1]), int(_header(head, "content-length") or 0)


async def under_watch(pid: int, work: Callable[[], Coroutine[Any, Any, int]]) -> tuple[int, int]:
    """Run `work` while sampling the gateway's RSS; (work's result, peak RSS)."""
    peak = rss_bytes(pid)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        result = await work()
    finally:
        done.set()
        await sampler
    return result, max(peak, rss_bytes(pid))


async def exchange(port: int, request: bytes) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    status, length = await read_response(reader)
    body = await reader.readexactly(length)
    writer.close()
    assert status == 200, body
    return body.decode()


async def upload(port: int, size: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % size)
    piece = bytes(PIECE)
    sent = 0
    while sent < size:
        writer.write(piece[: min(PIECE, size - sent)])
        sent += min(PIECE, size - sent)
        await writer.drain()
    status, length = await read_response(reader)
    counted = int(await reader.readexactly(length))
    writer.close()
    assert status == 200
    return counted


async def download(port: int, size: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /download?n=%d HTTP/1.1\r\nhost: t\r\n\r\n" % size)
    status, length = await read_response(reader)
    assert status == 200
    assert length == size
    received = 0
    while received < length:
        chunk = await reader.read(PIECE)
        assert chunk, "the gateway closed mid-download"
        received += len(chunk)
    writer.close()
    return received


async def test_a_gib_upload_passes_through_in_bounded_memory() -> None:
    async with gateway_process() as (port, pid):
        assert await exchange(port, b"GET /download?n=10 HTTP/1.1\r\nhost: t\r\n\r\n") == "\0" * 10
        baseline = rss_bytes(pid)
        counted, peak = await under_watch(pid, lambda: upload(port, GIB))
    assert counted == GIB
    assert peak - baseline < RSS_BUDGET, f"RSS grew by {(peak - baseline) >> 20} MiB"


async def test_a_gib_download_passes_through_in_bounded_memory() -> None:
    async with gateway_process() as (port, pid):
        assert await exchange(port, b"GET /download?n=10 HTTP/1.1\r\nhost: t\r\n\r\n") == "\0" * 10
        baseline = rss_bytes(pid)
        received, peak = await under_watch(pid, lambda: download(port, GIB))
    assert received == GIB
    assert peak - baseline < RSS_BUDGET, f"RSS grew by {(peak - baseline) >> 20} MiB"
