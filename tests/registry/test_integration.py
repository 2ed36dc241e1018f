"""The registry through a real `crossway server` process, on sqlite and etcd."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest

from crossway.testing.etcd import EtcdProcess
from crossway.testing.server import CrosswayServer, start_server
from crossway.testing.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture(params=["sqlite", "etcd"])
def server(request: pytest.FixtureRequest) -> Iterator[CrosswayServer]:
    if request.param == "etcd":
        etcd: EtcdProcess = request.getfixturevalue("etcd_server")
        running = start_server(store="etcd", etcd_endpoints=[etcd.endpoint])
    else:
        running = start_server(store="sqlite")
    yield running
    assert running.stop() == 0, running.log()[-2000:]


@pytest.fixture
async def client(server: CrosswayServer) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


def unique(name: str) -> str:
    return f"{name}-{time.monotonic_ns() % 10**9}"


async def register(client: httpx2.AsyncClient, service: str, iid: str, **body: Any) -> Any:
    response = await client.put(
        f"/v1/services/{service}/instances/{iid}",
        json={"address": "127.0.0.1", "port": 8080, **body},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def ids(client: httpx2.AsyncClient, service: str, **params: str) -> list[str]:
    response = await client.get(f"/v1/services/{service}", params=params)
    assert response.status_code == 200, response.text
    return [i["id"] for i in response.json()]


async def test_register_list_heartbeat_and_expiry(client: httpx2.AsyncClient) -> None:
    service = unique("orders")
    instance = await register(client, service, "o-1", ttl="2s", zone="eu-1", tags=["v2"])
    assert instance["status"] == "passing"
    assert instance["lease"]
    await register(client, service, "o-2", lease=instance["lease"])
    listing = await client.get("/v1/services")
    row = next(s for s in listing.json() if s["name"] == service)
    assert (row["instances"], row["healthy"], row["tags"]) == (2, 2, ["v2"])
    assert int(listing.headers["X-Crossway-Index"]) > 0
    assert await ids(client, service, healthy="true", zone="eu-1") == ["o-1"]
    for _ in range(8):  # 4 s of heartbeats keep a 2 s lease (and both instances) alive
        renewed = await client.put(f"/v1/leases/{instance['lease']}/keepalive")
        assert renewed.status_code == 200, renewed.text
        await asyncio.sleep(0.5)
    assert await ids(client, service) == ["o-1", "o-2"]
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and await ids(client, service):
        await asyncio.sleep(0.2)
    assert await ids(client, service) == [], "instances outlived their lease"
    gone = await client.put(f"/v1/leases/{instance['lease']}/keepalive")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "lease_not_found"


async def test_blocking_query_wakes_on_a_change(client: httpx2.AsyncClient) -> None:
    service = unique("orders")
    await register(client, service, "o-1")
    first = await client.get(f"/v1/services/{service}")
    index = first.headers["X-Crossway-Index"]
    started = time.monotonic()
    waiting = asyncio.ensure_future(
        client.get(f"/v1/services/{service}", params={"index": index, "wait": "20s"})
    )
    await asyncio.sleep(0.5)
    assert not waiting.done(), "a blocking query must wait for a change"
    await register(client, service, "o-2")
    answer = await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - started < 5
    assert int(answer.headers["X-Crossway-Index"]) > int(index)
    assert [i["id"] for i in answer.json()] == ["o-1", "o-2"]


async def test_sse_watch_streams_deltas(client: httpx2.AsyncClient) -> None:
    service = unique("orders")
    start = (await client.get(f"/v1/services/{service}")).headers["X-Crossway-Index"]
    prefix = f"/services/{service}/"
    events: list[tuple[str, str]] = []

    async def follow() -> None:
        params = {"prefix": prefix, "after": start}
        async with client.stream("GET", "/v1/watch", params=params) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            kind = None
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind in ("put", "delete"):
                    data = json.loads(line.split(":", 1)[1])
                    events.append((kind, data["key"].rsplit("/", 1)[1]))
                    if len(events) == 3:
                        return

    reader = asyncio.ensure_future(follow())
    await register(client, service, "a")
    await register(client, service, "b")
    assert (await client.delete(f"/v1/services/{service}/instances/a")).status_code == 200
    await asyncio.wait_for(reader, 10)
    assert events == [("put", "a"), ("put", "b"), ("delete", "a")]


class Upstream:
    """A tiny HTTP server whose health endpoint answers 200 until stopped."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def status_of(client: httpx2.AsyncClient, service: str, iid: str) -> str:
    rows = (await client.get(f"/v1/services/{service}")).json()
    return next((i["status"] for i in rows if i["id"] == iid), "gone")


async def wait_status(client: httpx2.AsyncClient, service: str, iid: str, want: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if await status_of(client, service, iid) == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{iid} never became {want}: {await status_of(client, service, iid)}")


async def test_http_check_marks_critical_when_the_upstream_stops(
    client: httpx2.AsyncClient,
) -> None:
    service = unique("web")
    upstream = Upstream()
    await upstream.start()
    check = {"http": f"http://127.0.0.1:{upstream.port}/health", "interval": "200ms"}
    await register(client, service, "w-1", port=upstream.port, check=check)
    await wait_status(client, service, "w-1", "passing")
    await upstream.stop()
    await wait_status(client, service, "w-1", "critical")
    assert await ids(client, service, healthy="true") == []


async def test_protect_threshold_serves_every_instance(client: httpx2.AsyncClient) -> None:
    service = unique("pay")
    upstream = Upstream()
    await upstream.start()
    good = {"http": f"http://127.0.0.1:{upstream.port}/", "interval": "200ms"}
    bad = {"tcp": f"127.0.0.1:{free_port()}", "interval": "200ms"}
    await register(client, service, "p-1", check=good)
    await register(client, service, "p-2", check=bad)
    await register(client, service, "p-3", check=bad)
    await wait_status(client, service, "p-1", "passing")
    await wait_status(client, service, "p-3", "critical")
    assert await ids(client, service, healthy="true") == ["p-1"]
    settings = await client.put(f"/v1/services/{service}/settings", json={"protect_threshold": 0.5})
    assert settings.status_code == 200, settings.text
    protected = await client.get(f"/v1/services/{service}", params={"healthy": "true"})
    assert protected.headers.get("X-Crossway-Protected") == "true"
    assert [i["id"] for i in protected.json()] == ["p-1", "p-2", "p-3"]
    await upstream.stop()


async def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(
    client: httpx2.AsyncClient,
) -> None:
    service = unique("orders")
    cases = [
        ({"address": "127.0.0.1", "port": 0}, "$.port"),
        ({"address": "127.0.0.1", "port": "80"}, "$.port"),
        ({"address": "no such host!", "port": 80}, "$.address"),
        ({"address": "127.0.0.1", "port": 80, "ttl": "soon"}, "$.ttl"),
        ({"address": "127.0.0.1", "port": 80, "colour": "red"}, "$.colour"),
    ]
    for body, field in cases:
        response = await client.put(f"/v1/services/{service}/instances/x", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"]["field"] == field
    bad_name = await client.put(
        "/v1/services/bad%20name/instances/x", json={"address": "127.0.0.1", "port": 80}
    )
    assert bad_name.status_code == 400
    assert await ids(client, service) == []
