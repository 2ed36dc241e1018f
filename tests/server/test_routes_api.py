"""The gateway-route API: validation naming the field, round trips,
compare-and-set, listing and blocking reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx2
import pytest
from starlette.applications import Starlette

from crossway.proxy.routes import GatewayConfig, decode_route
from crossway.proxy.routes.follow import follow_control_plane
from crossway.sdk.control import ControlPlane
from crossway.sdk.settings import ClientSettings
from crossway.server.api import routes as routes_api
from crossway.server.api import watch
from crossway.server.app import create_app
from crossway.server.context import ServerContext

from .helpers import live_server

ROUTE_A = b'{"backends": [{"service": "a"}]}'
ROUTE_B = b'{"backends": [{"service": "b"}]}'
MINIMAL = {
    "match": {"path_prefix": "/orders"},
    "backends": [{"service": "orders", "weight": 90}, {"service": "orders-canary", "weight": 10}],
    "timeout": "5s",
    "retries": {"attempts": 2},
}


@pytest.fixture
def app(ctx: ServerContext) -> Starlette:
    return create_app(ctx)


@pytest.fixture
async def api(app: Starlette) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://cp") as client:
        yield client


async def test_the_minimal_document_round_trips(api: httpx2.AsyncClient) -> None:
    put = await api.put("/v1/routes/orders", json=MINIMAL)
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["name"] == "orders"
    assert body["route"] == MINIMAL
    got = await api.get("/v1/routes/orders")
    assert got.status_code == 200
    assert got.json() == MINIMAL
    assert decode_route(got.content).backends[1].service == "orders-canary"
    assert got.headers["etag"] == f'"{body["revision"]}"'
    assert got.headers["x-crossway-index"] == str(body["revision"])


async def test_defaults_are_not_stored(api: httpx2.AsyncClient) -> None:
    doc = {"backends": [{"service": "a", "weight": 1}], "balancer": "round_robin"}
    put = await api.put("/v1/routes/a", json=doc)
    assert put.json()["route"] == {"backends": [{"service": "a"}]}


async def test_listing_has_every_route_with_its_revision(api: httpx2.AsyncClient) -> None:
    await api.put("/v1/routes/orders", json=MINIMAL)
    await api.put("/v1/routes/health", json={"direct_response": {"body": "ok"}})
    listing = await api.get("/v1/routes")
    assert listing.status_code == 200
    entries = {e["name"]: e for e in listing.json()}
    assert entries["orders"]["route"] == MINIMAL
    assert entries["health"]["route"] == {"direct_response": {"body": "ok"}}
    assert int(listing.headers["x-crossway-index"]) >= entries["health"]["revision"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"backends": [{"service": "a", "weight": -5}]}', "$.backends[0].weight"),
        (b'{"backends": [{"service": "a"}], "retries": {"atempts": 2}}', "$.retries.atempts"),
        (b'{"match": {"path_regex": "(["}, "backends": [{"service": "a"}]}', "$.match.path_regex"),
        (b'{"backends": [{"service": "a"}], "timeout": "soon"}', "$.timeout"),
        (b'{"backends": [{"service": "a"}], "balancer": "random"}', "$.balancer"),
        (b'{"match": {"path_prefix": "/a"}}', "$.backends"),
    ],
)
async def test_a_bad_document_is_refused_naming_the_field(
    api: httpx2.AsyncClient, body: bytes, field: str
) -> None:
    response = await api.put("/v1/routes/orders", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_argument"
    assert error["field"] == field
    assert (await api.get("/v1/routes/orders")).status_code == 404


async def test_malformed_json_and_bad_names(api: httpx2.AsyncClient) -> None:
    assert (await api.put("/v1/routes/orders", content=b"{")).status_code == 400
    assert (await api.put("/v1/routes/-bad", json=MINIMAL)).status_code == 400


async def test_delete_and_not_found(api: httpx2.AsyncClient) -> None:
    await api.put("/v1/routes/orders", json=MINIMAL)
    deleted = await api.delete("/v1/routes/orders")
    assert deleted.status_code == 200
    assert deleted.json()["name"] == "orders"
    assert (await api.get("/v1/routes/orders")).status_code == 404
    assert (await api.delete("/v1/routes/orders")).status_code == 404


async def test_if_match_makes_writes_compare_and_set(api: httpx2.AsyncClient) -> None:
    first = await api.put("/v1/routes/orders", json=MINIMAL, headers={"If-Match": "0"})
    assert first.status_code == 200
    again = await api.put("/v1/routes/orders", json=MINIMAL, headers={"If-Match": "0"})
    assert again.status_code == 412
    revision = first.json()["revision"]
    ok = await api.put("/v1/routes/orders", json=MINIMAL, headers={"If-Match": f'"{revision}"'})
    assert ok.status_code == 200
    stale = await api.delete("/v1/routes/orders", headers={"If-Match": str(revision)})
    assert stale.status_code == 412
    bad = await api.delete("/v1/routes/orders", headers={"If-Match": "latest"})
    assert bad.status_code == 400


async def test_a_blocking_listing_returns_on_the_next_change(api: httpx2.AsyncClient) -> None:
    first = await api.put("/v1/routes/orders", json=MINIMAL)
    index = first.json()["revision"]
    waiting = asyncio.create_task(api.get("/v1/routes", params={"index": index, "wait": "5s"}))
    for _ in range(20):  # let the request reach its watch
        await asyncio.sleep(0)
    assert not waiting.done()
    await api.put("/v1/routes/health", json={"direct_response": {}})
    listing = await asyncio.wait_for(waiting, 2)
    assert {e["name"] for e in listing.json()} == {"orders", "health"}


# -- gateways following the control plane ----------------------------------------------


@pytest.fixture
async def plane(ctx: ServerContext) -> AsyncIterator[ControlPlane]:
    app = create_app(ctx, providers=(watch.routes,), extra=[routes_api.routes])
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


async def test_a_gateway_follows_route_changes(plane: ControlPlane) -> None:
    await plane.request("PUT", "/v1/routes/a", content=ROUTE_A)
    seen: list[GatewayConfig] = []
    follower = asyncio.create_task(follow_control_plane(plane, seen.append))
    try:
        await _until(lambda: bool(seen) and "a" in seen[-1].routes)
        await plane.request("PUT", "/v1/routes/b", content=ROUTE_B)
        await _until(lambda: "b" in seen[-1].routes)
        await plane.request("DELETE", "/v1/routes/a")
        await _until(lambda: list(seen[-1].routes) == ["b"])
        versions = [int(c.version) for c in seen]
        assert versions == sorted(versions)
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
