"""The call-policy API: validation, round trips, compare-and-set, blocking
reads, and clients following `/policies/` through the watch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx2
import pytest
from starlette.applications import Starlette

from crossway.registry.model import Instance
from crossway.sdk.control import ControlPlane
from crossway.sdk.policies import CallPolicy, PolicyBook, RetrySpec, follow_control_plane
from crossway.sdk.settings import ClientSettings
from crossway.sdk.transport import CrosswayTransport
from crossway.server.api import policies, watch
from crossway.server.app import create_app
from crossway.server.context import ServerContext

from .helpers import live_server


@pytest.fixture
def app(ctx: ServerContext) -> Starlette:
    return create_app(ctx, providers=(watch.routes, policies.routes))


@pytest.fixture
async def api(app: Starlette) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://cp") as client:
        yield client


async def test_put_get_round_trip(api: httpx2.AsyncClient) -> None:
    doc = {"timeout": "2s", "retries": {"attempts": 2, "on": [503]}, "breaker": {}}
    put = await api.put("/v1/policies/orders", json=doc)
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["name"] == "orders"
    assert body["policy"] == doc
    got = await api.get("/v1/policies/orders")
    assert got.status_code == 200
    assert got.json() == doc  # stored with only what differs from the defaults
    assert got.headers["etag"] == f'"{body["revision"]}"'
    assert got.headers["x-crossway-index"] == str(body["revision"])


async def test_list_has_every_policy_with_its_revision(api: httpx2.AsyncClient) -> None:
    await api.put("/v1/policies/orders", json={"timeout": "1s"})
    await api.put("/v1/policies/default", json={"balancer": "least_request"})
    listing = await api.get("/v1/policies")
    assert listing.status_code == 200
    entries = {e["name"]: e for e in listing.json()}
    assert entries["orders"]["policy"] == {"timeout": "1s"}
    assert entries["default"]["policy"] == {"balancer": "least_request"}
    assert int(listing.headers["x-crossway-index"]) >= entries["default"]["revision"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"retries": {"attempts": 0}}', "$.retries.attempts"),
        (b'{"retries": {"atempts": 2}}', "$.retries.atempts"),
        (b'{"breaker": {"failure_rate": 120}}', "$.breaker.failure_rate"),
        (b'{"timeout": "soon"}', "$.timeout"),
        (b'{"balancer": "random"}', "$.balancer"),
        (b'{"bulkhead": {"max_concurrent": "many"}}', "$.bulkhead.max_concurrent"),
    ],
)
async def test_invalid_policies_are_refused_naming_the_field(
    api: httpx2.AsyncClient, body: bytes, field: str
) -> None:
    response = await api.put("/v1/policies/orders", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_argument"
    assert error["field"] == field
    assert (await api.get("/v1/policies/orders")).status_code == 404  # nothing stored


async def test_malformed_bodies_and_names(api: httpx2.AsyncClient) -> None:
    response = await api.put("/v1/policies/orders", content=b"{nope")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"
    response = await api.put("/v1/policies/bad!name", json={})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "name"


async def test_if_match_makes_writes_compare_and_set(api: httpx2.AsyncClient) -> None:
    created = await api.put("/v1/policies/orders", json={}, headers={"If-Match": "0"})
    assert created.status_code == 200
    revision = created.json()["revision"]
    again = await api.put("/v1/policies/orders", json={}, headers={"If-Match": "0"})
    assert again.status_code == 412
    stale = await api.put(
        "/v1/policies/orders", json={"timeout": "1s"}, headers={"If-Match": str(revision - 1)}
    )
    assert stale.status_code == 412
    fresh = await api.put(
        "/v1/policies/orders", json={"timeout": "1s"}, headers={"If-Match": f'"{revision}"'}
    )
    assert fresh.status_code == 200
    bad = await api.delete("/v1/policies/orders", headers={"If-Match": "x"})
    assert bad.status_code == 400


async def test_delete(api: httpx2.AsyncClient) -> None:
    assert (await api.delete("/v1/policies/orders")).status_code == 404
    await api.put("/v1/policies/orders", json={})
    deleted = await api.delete("/v1/policies/orders")
    assert deleted.status_code == 200
    assert deleted.json()["name"] == "orders"
    assert (await api.get("/v1/policies/orders")).status_code == 404
    assert (await api.get("/v1/policies")).json() == []


async def test_list_blocks_until_a_policy_changes(api: httpx2.AsyncClient) -> None:
    first = await api.get("/v1/policies")
    index = first.headers["x-crossway-index"]
    waiting = asyncio.create_task(api.get(f"/v1/policies?index={index}&wait=5s"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await api.put("/v1/policies/orders", json={"timeout": "1s"})
    answered = await asyncio.wait_for(waiting, 5)
    assert [e["name"] for e in answered.json()] == ["orders"]


# -- clients following the control plane ----------------------------------------------------------


@pytest.fixture
async def plane(app: Starlette) -> AsyncIterator[ControlPlane]:
    async with live_server(app) as url:
        control = ControlPlane(ClientSettings(url=url, address="127.0.0.1"))
        try:
            yield control
        finally:
            await control.aclose()


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_book_follows_puts_and_deletes(plane: ControlPlane) -> None:
    await plane.request("PUT", "/v1/policies/orders", json={"timeout": "1s"})
    book = PolicyBook()
    follower = asyncio.create_task(follow_control_plane(book, plane))
    try:
        await _until(lambda: book.policy_for("orders").timeout == "1s")
        await plane.request("PUT", "/v1/policies/orders", json={"timeout": "3s"})
        await _until(lambda: book.policy_for("orders").timeout == "3s")
        await plane.request("PUT", "/v1/policies/default", json={"balancer": "maglev"})
        await _until(lambda: book.policy_for("users").balancer == "maglev")
        await plane.request("DELETE", "/v1/policies/orders")
        await _until(lambda: book.policy_for("orders").balancer == "maglev")
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


class OneInstance:
    async def instances(self, service: str) -> list[Instance]:
        return [Instance(service, "a-1", "10.0.0.1", 8001)]

    def peek(self, service: str) -> list[Instance] | None:
        return None

    def subscribe(self, service: str, callback: object) -> object:
        return lambda: None


async def test_a_transport_applies_policies_from_the_plane_unless_code_pins_them(
    plane: ControlPlane,
) -> None:
    await plane.request("PUT", "/v1/policies/orders", json={"breaker": {"failures": 2}})
    await plane.request("PUT", "/v1/policies/users", json={"breaker": {"failures": 2}})
    transport = CrosswayTransport(
        OneInstance(),  # type: ignore[arg-type]
        inner=httpx2.MockTransport(lambda request: httpx2.Response(200)),
        policies={"users": CallPolicy(retries=RetrySpec(attempts=2))},
        control=plane,
    )
    async with httpx2.AsyncClient(transport=transport) as http:
        await http.get("http://orders/")
        await http.get("http://users/")
        router = transport.router

        def orders_breaker_failures() -> int | None:
            stack = router.stack("orders")
            breaker = stack.breaker if stack is not None else None
            return getattr(breaker, "fail_max", None)

        await _until(lambda: orders_breaker_failures() == 2)
        users = router.stack("users")
        assert users is not None
        assert users.breaker is None  # code pins users: the plane's policy does not apply
        await plane.request("PUT", "/v1/policies/orders", json={"breaker": {"failures": 7}})
        await _until(lambda: orders_breaker_failures() == 7)
