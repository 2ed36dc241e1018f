"""Loopback upstreams for the health tests: a tiny HTTP/1.1 server whose answer
can be changed (or withheld) at run time, and a grpc.aio server implementing
grpc.health.v1 with generic handlers and hand-encoded messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from crossway.registry import Catalog, Registry
from crossway.store.local import LocalStore
from crossway.store.memory import open_memory_store


@dataclass
class HttpUpstream:
    """Answers every request with `status` after `delay` seconds (or never, if `hang`)."""

    status: int = 200
    delay: float = 0.0
    hang: bool = False
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    async def start(self) -> HttpUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._released.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            await self._answer(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hang:
                await self._released.wait()
                return
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        body = b"ok\n"
        head = (
            f"HTTP/1.1 {self.status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[..., Awaitable[HttpUpstream]]]:
    """A factory of started `HttpUpstream`s, all stopped at teardown."""
    made: list[HttpUpstream] = []

    async def make(**options: Any) -> HttpUpstream:
        server = await HttpUpstream(**options).start()
        made.append(server)
        return server

    yield make
    for server in made:
        await server.stop()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_request_service(raw: bytes) -> str:
    """Field 1 of a HealthCheckRequest; enough for the short names these tests use."""
    if not raw:
        return ""
    assert raw[0] == 0x0A, raw
    assert raw[1] < 0x80, raw
    return raw[2 : 2 + raw[1]].decode()


class GrpcHealth:
    """grpc.health.v1.Health/Check answering from `statuses` (service -> enum)."""

    def __init__(
        self, statuses: dict[str, int], *, hang: bool = False, health: bool = True
    ) -> None:
        self.statuses = statuses
        self.hang = hang
        self.health = health
        self.port = 0
        self._server: Any = None

    async def start(self) -> GrpcHealth:
        import grpc  # type: ignore[import-untyped]

        self._server = grpc.aio.server()
        if self.health:
            handler = grpc.unary_unary_rpc_method_handler(self._check)
            self._server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": handler}),)
            )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)

    async def _check(self, request: bytes, context: Any) -> bytes:
        import grpc

        if self.hang:
            await asyncio.sleep(30)
        service = decode_request_service(request)
        if service not in self.statuses:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return b"\x08" + _varint(self.statuses[service])


@pytest.fixture
async def grpc_health() -> AsyncIterator[Callable[..., Awaitable[GrpcHealth]]]:
    made: list[GrpcHealth] = []

    async def make(statuses: dict[str, int], **options: Any) -> GrpcHealth:
        server = await GrpcHealth(statuses, **options).start()
        made.append(server)
        return server

    yield make
    for server in made:
        with contextlib.suppress(Exception):
            await server.stop()


@dataclass
class Stack:
    store: LocalStore
    catalog: Catalog
    registry: Registry


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """A memory store, a started catalog and a registry, on the system clock."""
    store = open_memory_store()
    catalog = Catalog(store)
    await catalog.start()
    yield Stack(store, catalog, Registry(store, catalog))
    await catalog.stop()
    await store.close()
