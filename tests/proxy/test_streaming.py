"""Large bodies stream through the proxy in bounded memory, both directions."""

from __future__ import annotations

import asyncio
import os

import pytest

from .test_server import gateway
from .upstreams import uvicorn_upstream

pytestmark = pytest.mark.integration

SIZE = 200 * 1024 * 1024
RSS_BUDGET = 50 * 1024 * 1024


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)


async def test_200_mb_download_streams_in_bounded_memory() -> None:
    async with uvicorn_upstream() as up, gateway(up) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        before = rss()
        peak = before
        writer.write(f"GET /big?n={SIZE} HTTP/1.0\r\nHost: a\r\n\r\n".encode())
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        received = 0
        while piece := await asyncio.wait_for(reader.read(1 << 20), 10):
            received += len(piece)
            if received % (16 << 20) < len(piece):
                peak = max(peak, rss())
        writer.close()
    assert received == SIZE
    print(f"rss growth {(peak - before) / 2**20:.1f} MiB")
    assert peak - before < RSS_BUDGET, (peak - before) >> 20


async def test_200_mb_upload_streams_in_bounded_memory() -> None:
    async with uvicorn_upstream() as up, gateway(up) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        before = rss()
        peak = before
        writer.write(f"POST /count HTTP/1.1\r\nHost: a\r\nContent-Length: {SIZE}\r\n\r\n".encode())
        block = b"u" * (1 << 20)
        for i in range(SIZE // len(block)):
            writer.write(block)
            await asyncio.wait_for(writer.drain(), 10)
            if i % 16 == 0:
                peak = max(peak, rss())
        head = await read_head(reader)
        body = await asyncio.wait_for(reader.read(100), 10)
        writer.close()
    assert head.startswith(b"HTTP/1.1 200")
    assert body == str(SIZE).encode()
    print(f"rss growth {(peak - before) / 2**20:.1f} MiB")
    assert peak - before < RSS_BUDGET, (peak - before) >> 20
