"""Forwarding to Zipkin or OTLP: the target setting, the bounded buffer, and a
real forwarder against a fake collector on loopback (batches, retries, drops)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from crossway.core.errors import InvalidArgument
from crossway.resilience.backoff import Backoff
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.settings import ServerSettings
from crossway.store.memory import open_memory_store
from crossway.telemetry.traces import otlp
from crossway.telemetry.traces.forward import (
    ForwardBuffer,
    Forwarder,
    ForwardTarget,
    parse_target,
)
from crossway.telemetry.traces.model import Span
from crossway.testing.services import free_port

FAST = Backoff(base=0.001, cap=0.005)


def spans(count: int, trace: int = 1) -> list[Span]:
    return [Span(trace_id=f"{trace:016x}", id=f"{n:016x}", name="op") for n in range(1, count + 1)]


def test_targets() -> None:
    assert parse_target("zipkin+http://z:9411") == ForwardTarget(
        "zipkin", "http://z:9411/api/v2/spans"
    )
    assert parse_target("otlp+https://c:4318/custom") == ForwardTarget(
        "otlp", "https://c:4318/custom"
    )
    for bad in ("http://z:9411", "jaeger+http://j", "zipkin+ftp://z", "zipkin+http://"):
        with pytest.raises(InvalidArgument, match="CROSSWAY_TRACES_FORWARD"):
            parse_target(bad)


def test_the_buffer_is_bounded_and_counts_drops() -> None:
    buffer = ForwardBuffer(3)
    assert buffer.offer(spans(2)) == 2
    assert buffer.offer(spans(2)) == 1
    assert buffer.stats.dropped == 1
    assert [s.id for s in buffer.take(2)] == ["0000000000000001", "0000000000000002"]
    assert len(buffer) == 1
    assert buffer.discard() == 1
    assert buffer.stats.dropped == 2


@dataclass
class Collector:
    """A fake collector: answers with `statuses` in turn (then 202), keeps bodies."""

    statuses: list[int] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: Request) -> Response:
        status = self.statuses.pop(0) if self.statuses else 202
        if status < 300:
            self.bodies.append(json.loads(await request.body()))
            self.received.set()
        return Response(status_code=status)

    def span_ids(self, protocol: str = "zipkin") -> list[str]:
        if protocol == "zipkin":
            return [s["id"] for body in self.bodies for s in body]
        return [s.id for body in self.bodies for s in otlp.decode_json(json.dumps(body).encode())]


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(collector: Collector) -> AsyncIterator[str]:
    app = Starlette(
        routes=[Route(path, collector.handle, methods=["POST"]) for path in ("/zipkin", "/otlp")]
    )
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.005)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("protocol", ["zipkin", "otlp"])
async def test_spans_arrive_in_batches(protocol: str) -> None:
    collector = Collector()
    async with serving(collector) as address:
        target = parse_target(f"{protocol}+http://{address}/{protocol}")
        forwarder = Forwarder(target, batch_size=4, flush_interval=0.02, backoff=FAST)
        await forwarder.start()
        forwarder.offer(spans(10))
        await wait_for(lambda: forwarder.stats.forwarded == 10)
        await forwarder.close()
    assert sorted(collector.span_ids(protocol)) == sorted(s.id for s in spans(10))
    assert len(collector.bodies) == 3  # 4 + 4 + 2


async def test_server_errors_are_retried_with_backoff() -> None:
    collector = Collector(statuses=[503, 429])
    async with serving(collector) as address:
        forwarder = Forwarder(
            parse_target(f"zipkin+http://{address}/zipkin"), flush_interval=0.01, backoff=FAST
        )
        await forwarder.start()
        forwarder.offer(spans(3))
        await wait_for(lambda: forwarder.stats.forwarded == 3)
        await forwarder.close()
    assert forwarder.stats.retries == 2
    assert forwarder.stats.dropped == 0


async def test_a_rejected_batch_is_dropped_without_retrying() -> None:
    collector = Collector(statuses=[400])
    async with serving(collector) as address:
        forwarder = Forwarder(
            parse_target(f"zipkin+http://{address}/zipkin"), flush_interval=0.01, backoff=FAST
        )
        await forwarder.start()
        forwarder.offer(spans(3))
        await wait_for(lambda: forwarder.stats.failed_batches == 1)
        await forwarder.close()
    assert forwarder.stats.retries == 0
    assert forwarder.stats.dropped == 3


async def test_close_flushes_what_is_buffered() -> None:
    collector = Collector()
    async with serving(collector) as address:
        forwarder = Forwarder(parse_target(f"zipkin+http://{address}/zipkin"), flush_interval=60)
        await forwarder.start()
        forwarder.offer(spans(2))
        await forwarder.close()
    assert forwarder.stats.forwarded == 2
    assert collector.span_ids() == [s.id for s in spans(2)]


async def test_an_unreachable_collector_never_blocks_ingest_or_shutdown() -> None:
    target = parse_target(f"zipkin+http://127.0.0.1:{free_port()}/zipkin")
    forwarder = Forwarder(
        target, capacity=5, batch_size=5, flush_interval=0.01, backoff=FAST, close_timeout=1
    )
    await forwarder.start()
    for _ in range(4):
        forwarder.offer(spans(5))  # returns at once even though nothing can be sent
    await asyncio.sleep(0.05)
    async with asyncio.timeout(5):
        await forwarder.close()
    stats = forwarder.stats
    assert stats.forwarded == 0
    assert stats.dropped == 20  # each span counted once: full buffer, given up, or left over


async def test_one_setting_makes_the_control_plane_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector = Collector()
    async with serving(collector) as address:
        monkeypatch.setenv("CROSSWAY_TRACES_FORWARD", f"zipkin+http://{address}/zipkin")
        store = open_memory_store()
        ctx = ServerContext(store=store, settings=ServerSettings(store="memory"))
        app = create_app(ctx)
        await ctx.start()
        try:
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
                sent = [{"traceId": "1", "id": "2"}]
                assert (await client.post("/api/v2/spans", json=sent)).status_code == 202
        finally:
            await ctx.close()
    assert collector.span_ids() == ["0000000000000002"]
