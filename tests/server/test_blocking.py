"""Consul-style blocking queries: ?index=N&wait=D."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from crossway.core.errors import InvalidArgument
from crossway.server.app import create_app
from crossway.server.blocking import (
    DEFAULT_WAIT,
    MAX_WAIT,
    BlockingParams,
    blocking_query,
    jittered_wait,
    should_block,
)
from crossway.server.context import ServerContext
from crossway.server.http import INDEX_HEADER, json_response
from crossway.store.local import LocalStore

from .helpers import live_server

PREFIX = "/items/"


def list_routes(ctx: ServerContext) -> list[BaseRoute]:
    async def items(request: Request) -> Response:
        await blocking_query(request, ctx.store, PREFIX)
        result = await ctx.store.range(PREFIX)
        return json_response([kv.key for kv in result.kvs], index=result.revision)

    return [Route("/v1/test/items", items)]


@pytest.fixture
async def api(ctx: ServerContext) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=create_app(ctx, extra=[list_routes]))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


def index_of(response: httpx2.Response) -> int:
    return int(response.headers[INDEX_HEADER])


# Pure parts.


def test_params_default_and_cap() -> None:
    assert BlockingParams.parse({}) == BlockingParams(index=None, wait=DEFAULT_WAIT)
    assert BlockingParams.parse({"index": "7", "wait": "1m30s"}) == BlockingParams(7, 90.0)
    assert BlockingParams.parse({"index": "7", "wait": "2h"}).wait == MAX_WAIT
    assert BlockingParams.parse({"index": "", "wait": ""}).index is None


@pytest.mark.parametrize(
    "query", [{"index": "-1"}, {"index": "abc"}, {"index": "1", "wait": "soon"}]
)
def test_bad_params_are_400(query: dict[str, str]) -> None:
    with pytest.raises(InvalidArgument):
        BlockingParams.parse(query)


@given(st.floats(0, MAX_WAIT), st.floats(0, 1, exclude_max=True))
def test_jitter_adds_at_most_a_sixteenth(wait: float, unit: float) -> None:
    assert wait <= jittered_wait(wait, unit) <= wait * (1 + 1 / 16)


@given(st.integers(0, 1000), st.integers(0, 1000), st.floats(0, 10))
def test_only_a_known_index_with_a_wait_blocks(index: int, current: int, wait: float) -> None:
    blocks = should_block(BlockingParams(index, wait), current)
    assert blocks == (index <= current and wait > 0)
    assert not should_block(BlockingParams(None, wait), current)


# Through the app.


async def test_without_index_it_answers_at_once(api: httpx2.AsyncClient, store: LocalStore) -> None:
    await store.put("/items/a", b"1")
    r = await api.get("/v1/test/items")
    assert r.json() == ["/items/a"]
    assert index_of(r) == 1


async def test_a_write_wakes_a_waiting_request(api: httpx2.AsyncClient, store: LocalStore) -> None:
    await store.put("/items/a", b"1")
    first = await api.get("/v1/test/items")
    started = time.monotonic()
    waiting = asyncio.create_task(
        api.get("/v1/test/items", params={"index": index_of(first), "wait": "5s"})
    )
    await until(lambda: store.watcher_count() == 1)
    assert not waiting.done()
    await store.put("/items/b", b"2")
    r = await waiting
    assert time.monotonic() - started < 2.5
    assert index_of(r) > index_of(first)
    assert r.json() == ["/items/a", "/items/b"]
    assert store.watcher_count() == 0


async def test_a_change_elsewhere_does_not_wake_it(
    api: httpx2.AsyncClient, store: LocalStore
) -> None:
    first = await api.get("/v1/test/items")
    waiting = asyncio.create_task(
        api.get("/v1/test/items", params={"index": index_of(first), "wait": "200ms"})
    )
    await until(lambda: store.watcher_count() == 1)
    await store.put("/other/x", b"1")
    await asyncio.sleep(0.05)
    assert not waiting.done()
    r = await waiting  # the wait ran out: the same list, at the store's revision now
    assert r.json() == []
    assert index_of(r) == 1


async def test_a_change_missed_between_requests_answers_at_once(
    api: httpx2.AsyncClient, store: LocalStore
) -> None:
    first = await api.get("/v1/test/items")
    await store.put("/items/a", b"1")
    r = await api.get("/v1/test/items", params={"index": index_of(first), "wait": "10m"})
    assert r.json() == ["/items/a"]


async def test_an_index_from_another_history_answers_at_once(api: httpx2.AsyncClient) -> None:
    r = await api.get("/v1/test/items", params={"index": 999, "wait": "10m"})
    assert r.status_code == 200
    assert index_of(r) == 0


async def test_a_compacted_index_answers_at_once(
    api: httpx2.AsyncClient, store: LocalStore
) -> None:
    for i in range(3):
        await store.put(f"/items/{i}", b"x")
    await store.compact(2)
    r = await api.get("/v1/test/items", params={"index": 1, "wait": "10m"})
    assert r.status_code == 200
    assert len(r.json()) == 3


async def test_shutdown_releases_waiting_requests(
    api: httpx2.AsyncClient, store: LocalStore, ctx: ServerContext
) -> None:
    waiting = asyncio.create_task(api.get("/v1/test/items", params={"index": 0, "wait": "10m"}))
    await until(lambda: store.watcher_count() == 1)
    ctx.begin_shutdown()
    r = await asyncio.wait_for(waiting, 2)
    assert r.status_code == 200
    # While shutting down, new blocking requests do not wait at all.
    r = await api.get("/v1/test/items", params={"index": 0, "wait": "10m"})
    assert r.status_code == 200


async def test_bad_query_is_a_json_400(api: httpx2.AsyncClient) -> None:
    r = await api.get("/v1/test/items", params={"index": "x"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_argument"


async def test_a_client_that_hangs_up_releases_its_watch(
    ctx: ServerContext, store: LocalStore
) -> None:
    app = create_app(ctx, extra=[list_routes])
    async with live_server(app) as url, httpx2.AsyncClient(base_url=url) as client:
        waiting = asyncio.create_task(
            client.get("/v1/test/items", params={"index": 0, "wait": "10m"})
        )
        await until(lambda: store.watcher_count() == 1)
        waiting.cancel()
        await until(lambda: store.watcher_count() == 0)
