from __future__ import annotations

import asyncio
import contextlib

import httpx2
import pytest

from crossway.sdk.control import (
    ControlPlane,
    ControlPlaneError,
    ControlPlaneUnavailable,
    SseEvent,
    index_of,
)
from crossway.sdk.settings import ClientSettings
from crossway.testing.server import CrosswayServer, shared_server
from crossway.testing.services import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> CrosswayServer:
    return shared_server("memory")  # one for every module; names here are this module's


def plane(url: str, **kw: object) -> ControlPlane:
    return ControlPlane(ClientSettings(url=url, address="127.0.0.1", **kw))  # type: ignore[arg-type]


async def test_register_list_keepalive_deregister(server: CrosswayServer) -> None:
    async with plane(server.url) as cp:
        body = {"address": "127.0.0.1", "port": 8080, "ttl": "5s", "zone": "eu-1"}
        instance = await cp.register("ctl-orders", "o-1", body)
        assert instance.lease is not None
        assert instance.zone == "eu-1"
        await cp.keepalive(instance.lease)
        found, index = await cp.instances("ctl-orders")
        assert [i.id for i in found] == ["o-1"]
        assert index > 0
        names = [s["name"] for s in await cp.services()]
        assert "ctl-orders" in names
        await cp.deregister("ctl-orders", "o-1")
        await cp.deregister("ctl-orders", "o-1")  # already gone: not an error
        assert (await cp.instances("ctl-orders"))[0] == []


async def test_unknown_lease_is_a_typed_4xx(server: CrosswayServer) -> None:
    async with plane(server.url) as cp:
        with pytest.raises(ControlPlaneError) as info:
            await cp.keepalive("abc123")
    assert info.value.status == 404
    assert info.value.code == "lease_not_found"
    assert info.value.to_json()["error"]["code"] == "lease_not_found"


async def test_invalid_registration_names_the_field(server: CrosswayServer) -> None:
    async with plane(server.url) as cp:
        with pytest.raises(ControlPlaneError) as info:
            await cp.register("ctl-bad", "b-1", {"address": "127.0.0.1", "port": 0})
    assert info.value.status == 400
    assert info.value.code == "invalid_argument"
    assert "port" in info.value.message


async def test_unreachable_is_unavailable() -> None:
    async with plane(f"http://127.0.0.1:{free_port()}", timeout=2.0) as cp:
        with pytest.raises(ControlPlaneUnavailable, match="cannot reach"):
            await cp.request("GET", "/v1/services")
        with pytest.raises(ControlPlaneUnavailable):
            async for _ in cp.sse("/v1/watch", {"prefix": "/services/"}):
                pass


def mock_plane(handler: object) -> ControlPlane:
    transport = httpx2.MockTransport(handler)  # type: ignore[arg-type]
    return ControlPlane(ClientSettings(address="127.0.0.1", token="t0k"), transport=transport)


async def test_5xx_is_unavailable_and_token_is_sent() -> None:
    seen: list[str | None] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers.get("authorization"))
        body = {"error": {"code": "unavailable", "message": "shutting down"}}
        return httpx2.Response(503, json=body)

    async with mock_plane(handler) as cp:
        with pytest.raises(ControlPlaneUnavailable, match="shutting down") as info:
            await cp.request("GET", "/v1/services")
    assert seen == ["Bearer t0k"]
    assert info.value.code == "control_plane_unavailable"


async def test_non_json_error_body_still_gives_a_message() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(418, text="teapot")

    async with mock_plane(handler) as cp:
        with pytest.raises(ControlPlaneError) as info:
            await cp.request("GET", "/x")
    assert (info.value.status, info.value.code, info.value.message) == (418, "http_418", "teapot")


async def test_sse_refusal_is_typed() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        body = {"error": {"code": "invalid_argument", "message": "prefix must start with '/'"}}
        return httpx2.Response(400, json=body)

    async with mock_plane(handler) as cp:
        with pytest.raises(ControlPlaneError, match="prefix"):
            async for _ in cp.sse("/v1/watch", {"prefix": "x"}):
                pass


async def test_sse_parses_frames_and_sends_last_event_id() -> None:
    seen: list[str | None] = []
    stream = (
        b": watching\n\n"
        b'event: put\ndata: {"key": "/a"}\n\n'
        b'id: 7\nevent: delete\ndata: {"key": "/b"}\n\n'
        b"event: compacted\ndata: {}\n\n"
    )

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.headers.get("last-event-id"))
        return httpx2.Response(200, content=stream, headers={"content-type": "text/event-stream"})

    async with mock_plane(handler) as cp:
        events = [e async for e in cp.sse("/v1/watch", {"prefix": "/"}, last_event_id="5")]
    assert seen == ["5"]
    assert events == [
        SseEvent("put", None, '{"key": "/a"}'),
        SseEvent("delete", "7", '{"key": "/b"}'),
        SseEvent("compacted", "7", "{}"),
    ]
    assert events[1].json() == {"key": "/b"}


async def test_watch_stream_sees_a_registration(server: CrosswayServer) -> None:
    async with plane(server.url) as cp:
        _, index = await cp.instances("ctl-watched")
        got: list[SseEvent] = []

        async def follow() -> None:
            params = {"prefix": "/services/ctl-watched/", "after": index}
            async for event in cp.sse("/v1/watch", params):
                got.append(event)
                return

        task = asyncio.ensure_future(follow())
        await asyncio.sleep(0.1)
        await cp.register("ctl-watched", "w-1", {"address": "127.0.0.1", "port": 81})
        await asyncio.wait_for(task, 5)
        await cp.deregister("ctl-watched", "w-1")
    assert got[0].event == "put"
    assert got[0].json()["key"] == "/services/ctl-watched/instances/w-1"
    assert got[0].id is not None
    assert int(got[0].id) > index


async def test_cancelling_a_request_propagates(server: CrosswayServer) -> None:
    async with plane(server.url) as cp:
        _, index = await cp.instances("ctl-none")
        params = {"index": str(index), "wait": "30s"}  # blocks: nothing will change
        task = asyncio.ensure_future(cp.request("GET", "/v1/services/ctl-none", params=params))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()


def test_index_of_tolerates_missing_header() -> None:
    assert index_of(httpx2.Response(200)) == 0
    assert index_of(httpx2.Response(200, headers={"X-Crossway-Index": "12"})) == 12
    assert index_of(httpx2.Response(200, headers={"X-Crossway-Index": "x"})) == 0
