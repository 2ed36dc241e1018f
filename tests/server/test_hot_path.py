"""The control plane's per-request shortcuts answer exactly as the plain code would.

- `IndexedRouter` picks the same route (or 404/405) as Starlette's `Router`.
- `CorkedTransport` sends one iteration's writes in one call, in order.
- `access_level` keeps probes and reads quiet and failures loud.
- `POST /v1/leases/keepalive` renews many leases at once and refuses bad batches whole.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx2
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, Router

from crossway.server.api.registry import MAX_KEEPALIVE_BATCH
from crossway.server.app import IndexedRouter
from crossway.server.middleware import access_level
from crossway.server.run import CorkedTransport

# -- IndexedRouter ---------------------------------------------------------------

SEGMENTS = ["v1", "api", "services", "config", "x", "{name}", "{rest:path}"]
METHODS = ["GET", "PUT", "DELETE"]


def _endpoint(label: str) -> Any:
    async def answer(request: Request) -> Response:
        return PlainTextResponse(label)

    return answer


def _template(parts: list[str]) -> str:
    # Parameter names must be unique within a template, and a path parameter
    # swallows the rest, so it can only come last.
    named = [
        p.replace("{name}", f"{{p{i}}}").replace("{rest", f"{{rest{i}") for i, p in enumerate(parts)
    ]
    ends = [i for i, p in enumerate(named) if ":path}" in p]
    return "/" + "/".join(named[: ends[0] + 1] if ends else named)


templates = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map(_template)
route_specs = st.lists(st.tuples(templates, st.sampled_from(METHODS)), min_size=1, max_size=12)
paths = st.lists(
    st.sampled_from(["v1", "api", "services", "config", "x", "orders", "a"]),
    min_size=0,
    max_size=5,
).map(lambda parts: "/" + "/".join(parts))


def _routes(specs: list[tuple[str, str]]) -> list[BaseRoute]:
    return [
        Route(template, _endpoint(f"{i}:{method} {template}"), methods=[method])
        for i, (template, method) in enumerate(specs)
    ]


async def _call(app: Any, method: str, path: str) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "scheme": "http",
        "server": ("test", 80),
        "http_version": "1.1",
    }
    status = 0
    body = b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, body
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")

    await app(scope, receive, send)
    return status, body


@settings(max_examples=150, deadline=None)
@given(specs=route_specs, requests=st.lists(st.tuples(st.sampled_from(METHODS), paths), max_size=8))
def test_indexed_router_answers_as_starlettes_router(
    specs: list[tuple[str, str]], requests: list[tuple[str, str]]
) -> None:
    routes = _routes(specs)
    plain = Router(routes, redirect_slashes=False)
    indexed = IndexedRouter(routes, redirect_slashes=False)

    async def compare() -> None:
        for method, path in requests:
            assert await _call(indexed, method, path) == await _call(plain, method, path), (
                method,
                path,
            )

    asyncio.run(compare())


async def test_indexed_router_tries_a_parameter_route_for_every_path() -> None:
    routes = _routes([("/v1/services", "GET"), ("/{anything:path}", "GET")])
    router = IndexedRouter(routes)
    assert await _call(router, "GET", "/v1/services") == (200, b"0:GET /v1/services")
    assert await _call(router, "GET", "/elsewhere/deep") == (200, b"1:GET /{anything:path}")


# -- CorkedTransport -------------------------------------------------------------


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[bytes]] = []
        self.closing = False
        self.aborted = False

    def write(self, data: Any) -> None:
        self.calls.append([bytes(data)])

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append([bytes(d) for d in list_of_data])

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True
        self.closing = True


async def test_writes_of_one_iteration_go_out_in_one_call_in_order() -> None:
    inner = RecordingTransport()
    corked = CorkedTransport(inner, asyncio.get_running_loop())
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    corked.writelines([b"hello ", b"world"])
    assert inner.calls == []
    assert corked.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nhello world")
    await asyncio.sleep(0)
    assert inner.calls == [[b"HTTP/1.1 200 OK\r\n\r\n", b"hello ", b"world"]]
    corked.write(b"next")
    await asyncio.sleep(0)
    assert inner.calls[-1] == [b"next"]  # a single write is passed as is


async def test_close_sends_what_is_pending_and_abort_drops_it() -> None:
    inner = RecordingTransport()
    corked = CorkedTransport(inner, asyncio.get_running_loop())
    corked.write(b"last words")
    corked.close()
    assert inner.calls == [[b"last words"]]
    assert inner.closing
    await asyncio.sleep(0)  # the scheduled flush finds nothing more to send
    assert inner.calls == [[b"last words"]]

    other = RecordingTransport()
    corked = CorkedTransport(other, asyncio.get_running_loop())
    corked.write(b"never sent")
    corked.abort()
    await asyncio.sleep(0)
    assert other.calls == []
    assert other.aborted


async def test_writes_to_a_closing_peer_are_dropped() -> None:
    inner = RecordingTransport()
    corked = CorkedTransport(inner, asyncio.get_running_loop())
    corked.write(b"too late")
    inner.closing = True
    await asyncio.sleep(0)
    assert inner.calls == []


# -- access_level -----------------------------------------------------------------


def test_access_level_is_quiet_for_reads_and_probes_and_loud_for_failures() -> None:
    assert access_level("GET", 200, quiet=False) == logging.DEBUG
    assert access_level("PUT", 200, quiet=True) == logging.DEBUG  # keepalives
    assert access_level("PUT", 200, quiet=False) == logging.INFO  # a change
    assert access_level("GET", 404, quiet=True) == logging.INFO
    assert access_level("GET", 0, quiet=True) == logging.INFO  # no answer at all
    assert access_level("PUT", 503, quiet=True) == logging.WARNING


# -- batched keepalive --------------------------------------------------------------


async def _register(client: httpx2.AsyncClient, service: str, iid: str) -> str:
    response = await client.put(
        f"/v1/services/{service}/instances/{iid}",
        json={"address": "127.0.0.1", "port": 8080, "ttl": "30s"},
    )
    assert response.status_code == 200, response.text
    lease: str = response.json()["lease"]
    return lease


async def test_batched_keepalive_renews_known_leases_and_names_missing_ones(
    client: httpx2.AsyncClient,
) -> None:
    a = await _register(client, "orders", "o-1")
    b = await _register(client, "payments", "p-1")
    gone = "7fffffff"
    response = await client.post("/v1/leases/keepalive", json={"leases": [a, b, gone]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["renewed"]) == {a, b}
    assert all(ttl == 30 for ttl in body["renewed"].values())
    assert body["missing"] == [gone]
    assert response.headers["X-Crossway-Index"].isdigit()


async def test_a_bad_batch_is_refused_whole(client: httpx2.AsyncClient) -> None:
    a = await _register(client, "orders", "o-2")
    for body, field in [
        ({"leases": [a, "not-hex"]}, None),
        ({"leases": [a] * (MAX_KEEPALIVE_BATCH + 1)}, "$.leases"),
        ({"leases": [a], "extra": 1}, None),
        ({"lease": a}, None),
    ]:
        response = await client.post("/v1/leases/keepalive", json=body)
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        if field is not None:
            assert error["field"] == field
