"""The span reporter: batching, the bounded buffer, drop counting, a dead endpoint."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx2
import msgspec
import pytest

from crossway.telemetry.tracecontext import TraceContext
from crossway.telemetry.traces.model import Endpoint, Span
from crossway.telemetry.traces.reporter import SpanReporter
from crossway.telemetry.traces.spans import (
    ERROR,
    PEER_SERVICE,
    RESEND_COUNT,
    ROUTE,
    STATUS,
    Sampler,
    client_span,
    server_span,
)
from crossway.telemetry.traces.zipkin import decode_spans

LOCAL = Endpoint(service_name="orders")


def span(n: int = 0) -> Span:
    ctx = TraceContext.root()
    return server_span(
        ctx,
        local=LOCAL,
        method="GET",
        path=f"/items/{n}",
        route="/items/{id}",
        status=200,
        start_us=1_700_000_000_000_000 + n,
        duration_us=100,
    )


class Collector:
    """A fake control plane: records every body posted to /api/v2/spans."""

    def __init__(self, status: int = 202) -> None:
        self.batches: list[list[Span]] = []
        self.paths: list[str] = []
        self.status = status

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.paths.append(request.url.path)
        self.batches.append(decode_spans(request.content))
        return httpx2.Response(self.status)

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle))


async def test_spans_go_in_batches_of_at_most_batch_size() -> None:
    collector = Collector()
    reporter = SpanReporter("http://cp", batch_size=10, client=collector.client())
    for n in range(25):
        reporter.record(span(n))
    assert await reporter.flush()
    assert [len(b) for b in collector.batches] == [10, 10, 5]
    assert set(collector.paths) == {"/api/v2/spans"}
    assert reporter.stats.sent == 25
    assert reporter.stats.batches == 3
    sent = [s.tags["url.path"] for batch in collector.batches for s in batch]
    assert sent == [f"/items/{n}" for n in range(25)]  # in order, none lost


async def test_a_full_batch_is_sent_without_waiting_for_the_interval() -> None:
    collector = Collector()
    reporter = SpanReporter(
        "http://cp", batch_size=5, flush_interval=60.0, client=collector.client()
    )
    await reporter.start()
    try:
        for n in range(5):
            reporter.record(span(n))
        async with asyncio.timeout(5):
            while not collector.batches:
                await asyncio.sleep(0.01)
        assert len(collector.batches[0]) == 5
    finally:
        await reporter.aclose()


async def test_a_full_batch_goes_alone_and_the_rest_waits_to_fill_the_next() -> None:
    collector = Collector()
    reporter = SpanReporter(
        "http://cp", batch_size=5, flush_interval=60.0, client=collector.client()
    )
    await reporter.start()
    try:
        for n in range(7):  # the wake-up for the fifth comes after all seven are queued
            reporter.record(span(n))
        async with asyncio.timeout(5):
            while not collector.batches:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert [len(b) for b in collector.batches] == [5]
        assert len(reporter) == 2
        for n in range(7, 10):
            reporter.record(span(n))
        async with asyncio.timeout(5):
            while len(collector.batches) < 2:
                await asyncio.sleep(0.01)
        assert [len(b) for b in collector.batches] == [5, 5]
    finally:
        await reporter.aclose()


async def test_the_interval_sends_a_partial_batch() -> None:
    collector = Collector()
    reporter = SpanReporter("http://cp", flush_interval=0.05, client=collector.client())
    async with reporter:
        reporter.record(span())
        async with asyncio.timeout(5):
            while not collector.batches:
                await asyncio.sleep(0.01)
    assert reporter.stats.sent == 1


def test_the_buffer_is_bounded_and_drops_are_counted() -> None:
    reporter = SpanReporter("http://cp", capacity=5)
    for n in range(8):
        reporter.record(span(n))
    assert len(reporter) == 5
    assert reporter.stats.recorded == 8
    assert reporter.stats.dropped == 3


async def test_closing_sends_what_is_left_and_counts_every_span_once() -> None:
    collector = Collector()
    reporter = SpanReporter("http://cp", client=collector.client())
    await reporter.start()
    for n in range(3):
        reporter.record(span(n))
    await reporter.aclose()
    reporter.record(span(9))  # after closing: dropped, counted
    stats = reporter.stats
    assert (stats.sent, stats.dropped, stats.failed) == (3, 1, 0)
    assert stats.recorded == stats.sent + stats.dropped + stats.failed


async def test_a_dead_endpoint_costs_counted_spans_and_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(refuse))
    reporter = SpanReporter("http://cp", batch_size=2, client=client)
    with caplog.at_level(logging.INFO, logger="crossway.traces"):
        for round_ in range(5):
            reporter.record(span(round_))
            reporter.record(span(round_))
            reporter.record(span(round_))
            assert not await reporter.flush()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "connection refused" in warnings[0].getMessage()
    assert reporter.outage.outages == 1
    # One batch tried per flush; the rest waits (bounded) for the next tick.
    assert reporter.stats.failed == 10
    assert len(reporter) == 5
    await reporter.aclose()
    assert reporter.stats.recorded == reporter.stats.failed + reporter.stats.dropped


async def test_recovery_is_logged_and_a_new_outage_logged_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = Collector(status=503)
    reporter = SpanReporter("http://cp", client=collector.client())
    with caplog.at_level(logging.INFO, logger="crossway.traces"):
        for status in (503, 503, 202, 202, 500):
            collector.status = status
            reporter.record(span())
            await reporter.flush()
    assert reporter.outage.outages == 2
    assert reporter.stats.sent == 2
    assert reporter.stats.failed == 3
    assert sum("works again" in r.getMessage() for r in caplog.records) == 1


async def test_threads_may_record_while_the_loop_sends() -> None:
    collector = Collector()
    reporter = SpanReporter(
        "http://cp", batch_size=50, flush_interval=0.05, client=collector.client()
    )
    await reporter.start()

    def hammer() -> None:
        for n in range(200):
            reporter.record(span(n))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    await reporter.aclose()
    assert reporter.stats.sent == 800
    assert sum(len(b) for b in collector.batches) == 800


async def test_a_token_is_sent_as_a_bearer_header() -> None:
    seen: list[str | None] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers.get("authorization"))
        return httpx2.Response(202)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handle))
    reporter = SpanReporter("http://cp/", token="s3cret", client=client)
    reporter.record(span())
    await reporter.flush()
    assert seen == ["Bearer s3cret"]


# -- spans and sampling ------------------------------------------------------------------


def test_a_server_span_carries_the_http_attributes_and_the_context_ids() -> None:
    parent = TraceContext.root()
    ctx = parent.child()
    built = server_span(
        ctx,
        local=LOCAL,
        method="POST",
        path="/orders/7",
        route="/orders/{id}",
        status=503,
        start_us=10,
        duration_us=0,
        server_address="orders",
    )
    wire = msgspec.json.decode(msgspec.json.encode(built))
    assert wire["traceId"] == parent.trace_id
    assert wire["parentId"] == parent.span_id
    assert wire["id"] == ctx.span_id
    assert wire["kind"] == "SERVER"
    assert wire["name"] == "POST /orders/{id}"
    assert wire["duration"] == 1
    assert wire["tags"][ROUTE] == "/orders/{id}"
    assert wire["tags"][STATUS] == "503"
    assert wire["tags"]["server.address"] == "orders"
    assert wire["tags"][ERROR] == "503"
    assert wire["localEndpoint"] == {"serviceName": "orders"}


def test_a_client_span_names_its_peer_and_its_retry_number() -> None:
    failed = client_span(
        trace_id="a" * 32,
        span_id="b" * 16,
        parent_id=None,
        local=LOCAL,
        peer_service="billing",
        method="GET",
        url="http://billing/pay",
        status=0,
        start_us=10,
        duration_us=20,
        attempt=3,
        error=ConnectionError("refused"),
    )
    assert failed.kind == "CLIENT"
    assert failed.remote_service == "billing"
    assert failed.tags[PEER_SERVICE] == "billing"
    assert failed.tags[RESEND_COUNT] == "2"
    assert failed.tags[ERROR] == "refused"
    assert STATUS not in failed.tags
    first = client_span(
        trace_id="a" * 32,
        span_id="c" * 16,
        parent_id="d" * 16,
        local=LOCAL,
        peer_service="billing",
        method="GET",
        url="http://billing/pay",
        status=200,
        start_us=10,
        duration_us=20,
    )
    assert RESEND_COUNT not in first.tags
    assert ERROR not in first.tags


def test_the_sampler_keeps_the_callers_decision_and_samples_new_traces_at_its_rate() -> None:
    never = Sampler(0.0)
    sampled_parent = TraceContext.root(sampled=True)
    assert never.context_for(sampled_parent).sampled  # the caller decided
    assert not Sampler(1.0).context_for(TraceContext.root(sampled=False)).sampled
    assert not never.context_for(None).sampled
    assert Sampler(1.0).context_for(None).sampled
    draws = iter([0.05, 0.5, 0.09, 0.95])
    tenth = Sampler(0.1, rand=lambda: next(draws))
    assert [tenth.sample_new() for _ in range(4)] == [True, False, True, False]
    with pytest.raises(ValueError, match="between 0 and 1"):
        Sampler(1.5)
