"""The coordination HTTP API, in process, through the control plane's app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette

from crossway.server.api.coord import routes
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.settings import ServerSettings
from crossway.store import Store
from crossway.store.memory import open_memory_store


@pytest.fixture
async def mem() -> AsyncIterator[Store]:
    s = open_memory_store()
    yield s
    await s.close()


@pytest.fixture
def ctx(mem: Store) -> ServerContext:
    return ServerContext(store=mem, settings=ServerSettings(store="memory", sse_heartbeat=0.2))


@pytest.fixture
def app(ctx: ServerContext) -> Starlette:
    return create_app(ctx, providers=(routes,))


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://cp", timeout=30) as c:
        yield c


async def new_session(http: httpx2.AsyncClient, name: str = "", ttl: str = "30s") -> str:
    response = await http.post("/v1/sessions", json={"ttl": ttl, "name": name})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ttl"] == ttl
    assert body["name"] == name
    return str(body["session"])


def error(response: httpx2.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


async def test_sessions_lifecycle(http: httpx2.AsyncClient) -> None:
    sid = await new_session(http, "worker-1")
    listed = await http.get("/v1/sessions")
    assert [s["session"] for s in listed.json()] == [sid]
    assert int(listed.headers["X-Crossway-Index"]) > 0
    one = (await http.get(f"/v1/sessions/{sid}")).json()
    assert one["name"] == "worker-1"
    assert 0 < one["remaining"] <= 30
    renewed = await http.put(f"/v1/sessions/{sid}/renew")
    assert renewed.json()["ttl"] == "30s"
    await http.put(f"/v1/locks/job?session={sid}")
    gone = await http.delete(f"/v1/sessions/{sid}")
    assert gone.json() == {"session": sid, "released": ["locks/job"]}
    again = await http.put(f"/v1/sessions/{sid}/renew")
    assert again.status_code == 404
    assert error(again)["code"] == "session_not_found"
    assert (await http.get("/v1/locks/job")).json()["holder"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ttl": "0.1s"}, "ttl"),
        ({"ttl": "soon"}, "ttl"),
        ({"ttl": "10s", "colour": "red"}, "$.colour"),
        ({"ttl": 10}, "$.ttl"),
    ],
)
async def test_bad_session_bodies_name_the_field(
    http: httpx2.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await http.post("/v1/sessions", json=body)
    assert response.status_code == 400
    assert error(response)["field"] == field


async def test_lock_fences_conflict_and_release(http: httpx2.AsyncClient) -> None:
    a, b = await new_session(http, "a"), await new_session(http, "b")
    first = await http.put(f"/v1/locks/nightly?session={a}&wait=0")
    assert first.status_code == 200
    held = first.json()
    assert held["held"] is True
    assert held["session"] == a
    busy = await http.put(f"/v1/locks/nightly?session={b}&wait=50ms")
    assert busy.status_code == 409
    assert error(busy)["code"] == "conflict"
    assert error(busy)["holder"]["session"] == a
    assert error(busy)["holder"]["fence"] == held["fence"]
    assert error(busy)["holder"]["name"] == "a"
    not_yours = await http.delete(f"/v1/locks/nightly?session={b}")
    assert not_yours.status_code == 409
    assert error(not_yours)["code"] == "not_holder"
    released = await http.delete(f"/v1/locks/nightly?session={a}")
    assert released.json()["released"] is True
    second = (await http.put(f"/v1/locks/nightly?session={b}&wait=0")).json()
    assert second["fence"] > held["fence"]
    listed = (await http.get("/v1/locks")).json()
    assert listed == [{"lock": "nightly", "holder": _public(second), "waiting": []}]


def _public(held: dict[str, Any]) -> dict[str, Any]:
    return {k: held[k] for k in ("session", "name", "fence", "since")}


async def test_waiting_request_is_served_on_release(http: httpx2.AsyncClient) -> None:
    a, b = await new_session(http), await new_session(http)
    await http.put(f"/v1/locks/job?session={a}")
    waiter = asyncio.create_task(http.put(f"/v1/locks/job?session={b}&wait=20s"))
    await _until_waiting(http, "/v1/locks/job", 1)
    view = (await http.get("/v1/locks/job")).json()
    assert view["waiting"][0]["session"] == b
    await http.delete(f"/v1/locks/job?session={a}")
    got = await asyncio.wait_for(waiter, 5)
    assert got.status_code == 200
    assert got.json()["session"] == b
    assert got.json()["since"] > got.json()["fence"]


async def test_a_client_that_goes_away_gives_up_its_place(http: httpx2.AsyncClient) -> None:
    a, b = await new_session(http), await new_session(http)
    await http.put(f"/v1/locks/job?session={a}")
    waiter = asyncio.create_task(http.put(f"/v1/locks/job?session={b}&wait=20s"))
    await _until_waiting(http, "/v1/locks/job", 1)
    waiter.cancel()  # the ASGI transport tells the app the client disconnected
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await _until_waiting(http, "/v1/locks/job", 0)


async def test_blocking_lock_query(http: httpx2.AsyncClient) -> None:
    a = await new_session(http)
    first = await http.get("/v1/locks/job")
    index = first.headers["X-Crossway-Index"]
    blocked = asyncio.create_task(http.get(f"/v1/locks/job?index={index}&wait=10s"))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    await http.put(f"/v1/locks/job?session={a}")
    answer = await asyncio.wait_for(blocked, 5)
    assert answer.json()["holder"]["session"] == a
    assert int(answer.headers["X-Crossway-Index"]) > int(index)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("", "session"),
        ("session=nothex", "session"),
        ("session=ab&wait=forever", "wait"),
        ("session=ab&wait=11m", "wait"),
    ],
)
async def test_bad_lock_parameters(http: httpx2.AsyncClient, query: str, field: str) -> None:
    response = await http.put(f"/v1/locks/job?{query}")
    assert response.status_code == 400
    assert error(response)["field"] == field
    bad_name = await http.put("/v1/locks/-bad-?session=ab")
    assert error(bad_name)["field"] == "name"


async def test_semaphore_api(http: httpx2.AsyncClient) -> None:
    a, b, c = [await new_session(http) for _ in range(3)]
    for s in (a, b):
        ok = await http.put(f"/v1/semaphores/pool?session={s}&limit=2&wait=0")
        assert ok.status_code == 200
        assert ok.json()["limit"] == 2
    full = await http.put(f"/v1/semaphores/pool?session={c}&limit=2&wait=0")
    assert full.status_code == 409
    assert [h["session"] for h in error(full)["holders"]] == [a, b]
    mismatch = await http.put(f"/v1/semaphores/pool?session={c}&limit=3&wait=0")
    assert mismatch.status_code == 409
    assert error(mismatch)["code"] == "limit_mismatch"
    missing = await http.put(f"/v1/semaphores/pool?session={c}")
    assert error(missing)["field"] == "limit"
    view = (await http.get("/v1/semaphores/pool")).json()
    assert view["limit"] == 2
    assert [h["session"] for h in view["holders"]] == [a, b]
    assert (await http.delete(f"/v1/semaphores/pool?session={a}")).status_code == 200
    got = await http.put(f"/v1/semaphores/pool?session={c}&limit=2&wait=0")
    assert got.status_code == 200
    assert [v["semaphore"] for v in (await http.get("/v1/semaphores")).json()] == ["pool"]


async def test_election_api(http: httpx2.AsyncClient) -> None:
    a, b = await new_session(http, "node-a"), await new_session(http, "node-b")
    none = await http.get("/v1/elections/primary/leader")
    assert none.json() == {"leader": None}
    won = await http.put(f"/v1/elections/primary?session={a}&wait=0", json={"value": "10.0.0.1"})
    assert won.status_code == 200
    assert won.json()["elected"] is True
    lost = await http.put(f"/v1/elections/primary?session={b}&wait=0", json={"value": "10.0.0.2"})
    assert lost.status_code == 409
    assert error(lost)["leader"]["value"] == "10.0.0.1"
    queued = await http.put(
        f"/v1/elections/primary?session={b}&wait=0&queue=true", json={"value": "10.0.0.2"}
    )
    assert queued.status_code == 202
    assert queued.json()["position"] == 1
    assert queued.json()["leader"]["session"] == a
    leader = await http.get("/v1/elections/primary/leader")
    assert leader.json()["leader"]["value"] == "10.0.0.1"
    assert leader.json()["leader"]["name"] == "node-a"
    index = leader.headers["X-Crossway-Index"]
    blocked = asyncio.create_task(http.get(f"/v1/elections/primary/leader?index={index}&wait=10s"))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    resigned = await http.delete(f"/v1/elections/primary?session={a}")
    assert resigned.json()["resigned"] is True
    answer = await asyncio.wait_for(blocked, 5)
    assert answer.json()["leader"]["session"] == b
    election = (await http.get("/v1/elections/primary")).json()
    assert election["leader"]["value"] == "10.0.0.2"
    assert election["candidates"] == []
    no_body = await http.put(f"/v1/elections/other?session={a}&wait=0")
    assert no_body.json()["value"] == ""
    bad = await http.put(f"/v1/elections/other?session={a}", json={"valeu": "x"})
    assert error(bad)["field"] == "$.valeu"


async def test_leader_event_stream(http: httpx2.AsyncClient, app: Starlette) -> None:
    # The ASGI transport buffers whole responses, so the stream is driven by hand.
    a, b = await new_session(http), await new_session(http)
    await http.put(f"/v1/elections/primary?session={a}&wait=0", json={"value": "A"})
    frames: list[dict[str, Any]] = []
    comments: list[str] = []
    leave = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not frames and not comments:
            return {"type": "http.request", "body": b"", "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        for line in message.get("body", b"").decode().splitlines():
            if line.startswith("data: "):
                frames.append(json.loads(line[6:]))
            elif line.startswith(": "):
                comments.append(line)
        if len(frames) == 2:
            leave.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/elections/primary/leader",
        "raw_path": b"/v1/elections/primary/leader",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"accept", b"text/event-stream")],
        "client": ("127.0.0.1", 5000),
        "server": ("cp", 80),
    }
    stream = asyncio.create_task(app(scope, receive, send))
    await asyncio.sleep(0.3)  # a quiet heartbeat passes
    await http.put(f"/v1/elections/primary?session={b}&wait=0&queue=true", json={"value": "B"})
    await http.delete(f"/v1/sessions/{a}")
    await asyncio.wait_for(stream, 5)
    assert [f["leader"]["value"] for f in frames] == ["A", "B"]
    assert ": heartbeat" in comments


async def _until_waiting(http: httpx2.AsyncClient, path: str, count: int) -> None:
    for _ in range(500):
        if len((await http.get(path)).json()["waiting"]) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never had {count} waiting")
