"""SSE framing (pure) and the GET /v1/watch stream over a real loopback server."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.core.errors import InvalidArgument
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.settings import ServerSettings
from crossway.server.sse import (
    COMPACTED_MESSAGE,
    check_prefix,
    comment,
    encode_batch,
    event_data,
    resume_revision,
)
from crossway.store import Delete, Event, EventType, KeyValue, Put
from crossway.store.local import LocalStore

from .helpers import Frame, live_server, next_event, sse_frames

# Pure framing.


def _event(key: str, value: bytes, revision: int, kind: EventType = EventType.PUT) -> Event:
    return Event(kind, KeyValue(key, value, create_revision=1, mod_revision=revision, version=1))


@given(st.binary(max_size=40))
def test_values_round_trip_as_text_or_base64(value: bytes) -> None:
    data = json.loads(json.dumps(event_data(_event("/k", value, 3))))
    if data.get("encoding") == "base64":
        assert base64.b64decode(data["value"]) == value
    else:
        assert data["value"].encode() == value
    assert data["revision"] == 3
    assert data["type"] == "put"


@given(st.lists(st.integers(1, 5), min_size=1, max_size=12), st.text(max_size=10))
def test_ids_only_on_revision_boundaries_and_frames_stay_whole(revs: list[int], key: str) -> None:
    revisions = sorted(revs)
    events = [_event("/" + key, key.encode(), r) for r in revisions]
    frames = encode_batch(events).decode().split("\n\n")[:-1]
    assert len(frames) == len(events)
    ids = [line[4:] for f in frames for line in f.split("\n") if line.startswith("id: ")]
    assert ids == [str(r) for r in sorted(set(revisions))]
    for f in frames:
        assert [line.split(":")[0] for line in f.split("\n")][-2:] == ["event", "data"]


def test_comments_never_break_a_frame() -> None:
    assert comment("a\nb\rc") == b": a b c\n\n"


def test_resume_prefers_last_event_id() -> None:
    assert resume_revision("12", "3") == 12
    assert resume_revision(None, "3") == 3
    assert resume_revision(" ", None) is None
    with pytest.raises(InvalidArgument):
        resume_revision("abc", None)
    with pytest.raises(InvalidArgument):
        resume_revision(None, "-4")


def test_only_the_user_keyspace_can_be_watched() -> None:
    assert check_prefix("/services/") == "/services/"
    for bad in ("services/", "", "/a\nb"):
        with pytest.raises(InvalidArgument):
            check_prefix(bad)


# The stream.


@pytest.fixture
def fast_settings() -> ServerSettings:
    return ServerSettings(store="memory", sse_heartbeat=0.2)


@pytest.fixture
async def url(store: LocalStore, fast_settings: ServerSettings) -> AsyncIterator[str]:
    ctx = ServerContext(store=store, settings=fast_settings)
    async with live_server(create_app(ctx)) as base:
        yield base


@pytest.fixture
async def http(url: str) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=url, timeout=5) as client:
        yield client


async def _open(
    http: httpx2.AsyncClient, params: dict[str, str | int], headers: dict[str, str] | None = None
) -> tuple[httpx2.Response, AsyncIterator[Frame]]:
    request = http.build_request("GET", "/v1/watch", params=params, headers=headers)
    response = await http.send(request, stream=True)
    return response, sse_frames(response)


async def test_events_arrive_in_order_with_ids(http: httpx2.AsyncClient, store: LocalStore) -> None:
    response, frames = await _open(http, {"prefix": "/svc/"})
    try:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-crossway-index"] == "0"
        first = await anext(frames)
        assert first.comments == ["watching /svc/ after revision 0"]
        await store.put("/svc/a", b"one")
        await store.put("/elsewhere", b"ignored")
        await store.txn([], [Put("/svc/b", b"\xff\x00"), Delete("/svc/a")])
        got = [await next_event(frames) for _ in range(3)]
    finally:
        await response.aclose()
    assert [(f.event, f.json()["key"]) for f in got] == [
        ("put", "/svc/a"),
        ("put", "/svc/b"),
        ("delete", "/svc/a"),
    ]
    assert [f.id for f in got] == ["1", None, "3"]  # one id per transaction, on its last event
    assert got[0].json() == {
        "type": "put",
        "key": "/svc/a",
        "value": "one",
        "revision": 1,
        "create_revision": 1,
        "version": 1,
        "lease": 0,
    }
    assert got[1].json()["encoding"] == "base64"
    assert base64.b64decode(got[1].json()["value"]) == b"\xff\x00"


async def test_resume_with_last_event_id(http: httpx2.AsyncClient, store: LocalStore) -> None:
    for i in range(4):
        await store.put(f"/k/{i}", str(i).encode())
    response, frames = await _open(http, {"prefix": "/k/", "after": 0}, {"Last-Event-ID": "2"})
    try:
        assert response.headers["x-crossway-index"] == "2"
        got = [await next_event(frames) for _ in range(2)]
    finally:
        await response.aclose()
    assert [f.json()["key"] for f in got] == ["/k/2", "/k/3"]
    assert [f.id for f in got] == ["3", "4"]


async def test_compacted_history_sends_compacted_then_ends(
    http: httpx2.AsyncClient, store: LocalStore
) -> None:
    for i in range(5):
        await store.put(f"/k/{i}", b"x")
    await store.compact(3)
    response, frames = await _open(http, {"prefix": "/k/", "after": 1})
    try:
        frame = await next_event(frames)
        rest = [f async for f in frames]
    finally:
        await response.aclose()
    assert frame.event == "compacted"
    assert frame.json() == {"compacted_revision": 3, "message": COMPACTED_MESSAGE}
    assert rest == []


async def test_heartbeats_while_idle(http: httpx2.AsyncClient) -> None:
    response, frames = await _open(http, {"prefix": "/quiet/"})
    try:
        await anext(frames)
        async with asyncio.timeout(3):
            heartbeat = await anext(frames)
    finally:
        await response.aclose()
    assert heartbeat.comments == ["heartbeat"]
    assert heartbeat.event is None


async def test_hanging_up_releases_the_watch(http: httpx2.AsyncClient, store: LocalStore) -> None:
    response, frames = await _open(http, {"prefix": "/k/"})
    await anext(frames)
    assert store.watcher_count() == 1
    await response.aclose()
    async with asyncio.timeout(3):
        while store.watcher_count():
            await asyncio.sleep(0.005)


async def test_bad_parameters_are_json_400(http: httpx2.AsyncClient) -> None:
    for params, headers in (
        ({"prefix": "k/"}, {}),
        ({"after": "x"}, {}),
        ({}, {"Last-Event-ID": "?"}),
    ):
        r = await http.get("/v1/watch", params=params, headers=headers)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_argument"


async def test_shutdown_ends_streams_promptly(
    store: LocalStore, fast_settings: ServerSettings
) -> None:
    ctx = ServerContext(store=store, settings=fast_settings)
    async with live_server(create_app(ctx)) as base, httpx2.AsyncClient(base_url=base) as http:
        response, frames = await _open(http, {"prefix": "/"})
        await anext(frames)
        ctx.begin_shutdown()
        async with asyncio.timeout(3):
            rest = [f async for f in frames]
        await response.aclose()
    assert rest[-1].comments == ["server shutting down; reconnect with Last-Event-ID"]
