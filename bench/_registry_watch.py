"""The registry bench's watchers: 1,000 SSE streams or blocking queries, and the
rounds of changes that time them (the etcd side reuses `Rounds`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import cast

from bench._registry_load import (
    ROUND_TIMEOUT,
    ROUNDS,
    WATCHED,
    WATCHERS,
    Conn,
    Latency,
    registration,
)


class SseStream(asyncio.Protocol):
    """One watch stream; hands every chunk to `on_chunk` with its arrival time."""

    def __init__(self, request: bytes, group: int, on_chunk: Callable[[int, bytes, float], None]):
        self.request, self.group, self.on_chunk = request, group, on_chunk
        self.ready = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            self.ready.set_result(None)
        self.on_chunk(self.group, data, time.perf_counter())


class Rounds:
    """The marks of the rounds, who has seen the current one, and when."""

    def __init__(self, per_group: int) -> None:
        self.per_group = per_group
        self.group, self.mark, self.sent, self.seen = -1, b"", 0.0, 0
        self.everyone = asyncio.Event()
        self.latency = Latency()

    def saw(self, group: int, data: bytes, now: float) -> None:
        if group == self.group and self.mark and self.mark in data:
            self.latency.samples.append(now - self.sent)
            self.seen += 1
            if self.seen == self.per_group:
                self.everyone.set()

    async def run(self, change: Callable[[int, str], Awaitable[None]]) -> Latency:
        for round_no in range(ROUNDS):
            self.group, mark = round_no % WATCHED, f"mark-{round_no:04d}-{random.random():.6f}"
            self.seen, self.mark = 0, mark.encode()
            self.everyone.clear()
            self.sent = time.perf_counter()
            await change(self.group, mark)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.everyone.wait(), ROUND_TIMEOUT)
            self.latency.missed += self.per_group - self.seen
            self.mark = b""
            await asyncio.sleep(0.05)
        return self.latency


def http_change(port: int) -> Callable[[int, str], Awaitable[None]]:
    conn: list[Conn] = []

    async def change(group: int, mark: str) -> None:
        if not conn:
            conn.append(await Conn.open(port))
        path = f"/v1/services/svc-{group}/instances/i-0"
        status, _ = await conn[0].request("PUT", path, registration(f"svc-{group}", 0, mark))
        assert status == 200, status

    return change


async def sse_latency(port: int) -> Latency:
    rounds = Rounds(WATCHERS // WATCHED)
    loop = asyncio.get_running_loop()
    streams: list[SseStream] = []
    for w in range(WATCHERS):
        path = f"/v1/watch?prefix=/services/svc-{w % WATCHED}/instances/"
        stream = SseStream(
            f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode(), w % WATCHED, rounds.saw
        )
        await loop.create_connection(lambda s=stream: s, "127.0.0.1", port)  # type: ignore[misc]
        streams.append(stream)
    try:
        await asyncio.wait_for(asyncio.gather(*(s.ready for s in streams)), 30)
        rounds.latency.watchers = len(streams)
        return await rounds.run(http_change(port))
    finally:
        for stream in streams:
            if stream.transport is not None:
                stream.transport.close()


async def blocking_latency(port: int) -> Latency:
    rounds = Rounds(WATCHERS // WATCHED)
    conns = [await Conn.open(port) for _ in range(WATCHERS)]
    armed = 0

    async def poll(conn: Conn, group: int) -> None:
        nonlocal armed
        path = f"/v1/services/svc-{group}"
        conn.send("GET", path)
        _, headers, _ = await conn.answer()
        armed += 1
        while True:
            conn.send("GET", f"{path}?index={headers[b'x-crossway-index'].decode()}&wait=30s")
            _, headers, body = await conn.answer()
            rounds.saw(group, body, time.perf_counter())

    pollers = [asyncio.ensure_future(poll(c, w % WATCHED)) for w, c in enumerate(conns)]
    try:
        while armed < WATCHERS:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # let the last requests reach the server and block
        rounds.latency.watchers = WATCHERS
        return await rounds.run(http_change(port))
    finally:
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        for conn in conns:
            conn.close()
