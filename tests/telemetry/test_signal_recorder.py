"""The client-side recorder and its async pusher."""

from __future__ import annotations

import json
import threading

import httpx2
import pytest

from crossway.telemetry.metrics import OVERFLOW
from crossway.telemetry.signals.push import validate
from crossway.telemetry.signals.recorder import Recorder, StatsPusher


def test_records_aggregate_into_cells() -> None:
    r = Recorder("orders", instance="o-1")
    for _ in range(5):
        r.record("/orders/{id}", "GET", 200, 0.02, caller="checkout")
    r.record("/orders/{id}", "GET", 503, 0.5, caller="checkout")
    r.record("/orders/{id}", "GET", 0, 1.0)  # no response at all: a failure
    push = r.snapshot()
    assert push is not None
    validate(push)
    assert push.source.service == "orders"
    assert push.side == "server"
    by_class = {(s.status_class, s.caller): s for s in push.series}
    ok = by_class[("2xx", "checkout")]
    assert (ok.count, ok.errors, ok.service) == (5, 0, "orders")
    assert ok.sum == pytest.approx(0.1)
    assert by_class[("5xx", "checkout")].errors == 1
    assert by_class[("none", None)].errors == 1
    assert r.snapshot() is None  # drained


def test_client_side_records_other_services_with_itself_as_caller() -> None:
    r = Recorder("gateway", side="client")
    r.record("/books", "GET", 200, 0.01, service="books")
    push = r.snapshot()
    assert push is not None
    [series] = push.series
    assert (series.service, series.caller, push.side) == ("books", "gateway", "client")


def test_cells_are_bounded() -> None:
    r = Recorder("s", max_cells=4)
    for i in range(50):
        r.record(f"/r{i}", "GET", 200, 0.01)
    push = r.snapshot()
    assert push is not None
    validate(push)
    assert len(push.series) <= 5
    assert sum(s.count for s in push.series) == 50
    assert OVERFLOW in {s.route for s in push.series}


def test_threads_can_record_concurrently() -> None:
    r = Recorder("s")

    def hammer() -> None:
        for _ in range(2000):
            r.record("/x", "GET", 200, 0.001)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    push = r.snapshot()
    assert push is not None
    assert sum(s.count for s in push.series) == 8000


async def test_pusher_posts_snapshots_and_counts_failures() -> None:
    received: list[dict[str, object]] = []
    fail = {"now": False}

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/stats/push"
        assert request.headers["authorization"] == "Bearer t0k"
        if fail["now"]:
            return httpx2.Response(503, json={"error": {"code": "unavailable", "message": "x"}})
        received.append(json.loads(request.content))
        return httpx2.Response(202, json={"accepted": 1})

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    r = Recorder("orders")
    pusher = StatsPusher(r, "http://cp:7700/", token="t0k", client=client, interval=3600)
    assert await pusher.push()  # nothing recorded: nothing sent
    assert received == []
    r.record("/a", "GET", 200, 0.01)
    assert await pusher.push()
    assert received[0]["source"] == {"service": "orders", "instance": ""}
    fail["now"] = True
    r.record("/a", "GET", 200, 0.01)
    assert not await pusher.push()
    assert (pusher.stats.pushed, pusher.stats.failed, pusher.stats.series_dropped) == (1, 1, 1)
    fail["now"] = False
    async with pusher:
        r.record("/b", "POST", 201, 0.01)
    assert len(received) == 2  # the final flush on close
    await client.aclose()


async def test_pusher_survives_an_unreachable_control_plane() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("refused", request=request)

    client = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    r = Recorder("orders")
    r.record("/a", "GET", 200, 0.01)
    pusher = StatsPusher(r, "http://cp", client=client)
    assert not await pusher.push()
    assert pusher.stats.failed == 1
    await pusher.aclose()
    await client.aclose()


def test_a_kept_cell_counts_until_the_next_snapshot_retires_it() -> None:
    r = Recorder("gateway", side="client")
    generation = r.generation
    cell = r.cell("/books", "GET", 503, service="books")
    assert r.cell("/books", "GET", 500, service="books") is cell  # one cell per status class
    cell.add(0.25)
    cell.add(0.5)
    r.record("/books", "GET", 502, 0.25, service="books")  # the same key, under the lock
    assert (sum(cell.counts), cell.sum) == (2, 0.75)  # into its own cell: added up at snapshot
    push = r.snapshot()
    assert push is not None
    [series] = push.series
    assert (series.service, series.caller, series.status_class) == ("books", "gateway", "5xx")
    assert (series.count, series.errors, series.sum) == (3, 3, 1.0)
    assert r.generation != generation
    assert r.cell("/books", "GET", 503, service="books") is not cell
    assert r.snapshot() is None  # a cell handed out but never added to is not pushed


def test_kept_cells_and_locked_records_from_other_threads_add_up_at_snapshot() -> None:
    """The owner thread adds to its kept cell without the lock while other
    threads record the same key under it: each writes its own cells, so no
    count is lost even where `+=` on a shared cell could interleave."""
    r = Recorder("shop", side="client")
    cell = r.cell("/items", "GET", 200, service="orders")
    per_thread = 20_000
    start = threading.Barrier(3)

    def blocking_client() -> None:
        start.wait()
        for _ in range(per_thread):
            r.record("/items", "GET", 200, 0.001, service="orders")

    workers = [threading.Thread(target=blocking_client) for _ in range(2)]
    for worker in workers:
        worker.start()
    start.wait()
    for _ in range(per_thread):
        cell.add(0.001)
    for worker in workers:
        worker.join()
    assert sum(cell.counts) == per_thread  # the lock-free cell had one writer
    push = r.snapshot()
    assert push is not None
    [series] = push.series
    assert series.count == 3 * per_thread
    assert series.sum == pytest.approx(3 * per_thread * 0.001)


def test_kept_and_recorded_cells_share_the_cell_budget() -> None:
    r = Recorder("gateway", side="client", max_cells=2)
    r.record("/a", "GET", 200, 0.01, service="s")
    r.cell("/b", "GET", 200, service="s").add(0.01)
    r.cell("/c", "GET", 200, service="s").add(0.01)  # over budget: overflow
    r.record("/d", "GET", 200, 0.01, service="s")  # over budget: overflow, its own cell
    push = r.snapshot()
    assert push is not None
    assert sorted((s.route, s.count) for s in push.series) == [("/a", 1), ("/b", 1), (OVERFLOW, 2)]
