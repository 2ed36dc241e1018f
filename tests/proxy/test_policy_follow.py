"""Call policies reach the gateway: from the control plane (followed live
beside the routes) and from gateway.yaml."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import httpx
import pytest

from crossway.proxy.routes.config import ConfigFileError, parse_config
from crossway.proxy.routes.follow import RouteBook
from crossway.proxy.run import GatewaySettings, serve_gateway
from crossway.testing.server import CrosswayServer, shared_server
from crossway.traffic.policy import BulkheadSpec, CallPolicy

from .upstreams import uvicorn_upstream

ROUTE = b'{"backends": [{"service": "a"}]}'
POLICY = b'{"bulkhead": {"max_concurrent": 3}}'


def event(key: str, value: bytes = b"", revision: int = 1) -> str:
    return json.dumps({"key": key, "value": value.decode(), "revision": revision})


def test_the_book_takes_policy_listings_and_events() -> None:
    book = RouteBook()
    book.replace({"r": ROUTE}, 4)
    book.replace_policies({"a": POLICY, "bad": b'{"bulkhead": {"max_concurrent": 0}}'}, 5)
    assert book.snapshot().policies == {"a": CallPolicy(bulkhead=BulkheadSpec(max_concurrent=3))}
    assert book.apply_event("put", event("/policies/default", b"{}", 6))
    assert book.apply_event("delete", event("/policies/a", revision=7))
    snapshot = book.snapshot()
    assert dict(snapshot.policies) == {"default": CallPolicy()}
    assert snapshot.version == "7"
    assert list(snapshot.routes) == ["r"]
    assert not book.apply_event("put", event("/policies/a/b", POLICY))


def test_a_bad_policy_event_keeps_the_previous_one() -> None:
    book = RouteBook()
    book.apply_event("put", event("/policies/a", POLICY, 2))
    book.apply_event("put", event("/policies/a", b'{"breaker": {"kind": "psychic"}}', 3))
    assert book.policies["a"].bulkhead == BulkheadSpec(max_concurrent=3)


def test_gateway_yaml_holds_policies_and_a_redis_url() -> None:
    config = parse_config(
        "routes:\n"
        "  r: {backends: [{service: orders}]}\n"
        "policies:\n"
        "  orders: {bulkhead: {max_concurrent: 10, max_queue: 5}}\n"
        "  default: {breaker: {failures: 3}}\n"
        "redis_url: redis://127.0.0.1:6379/0\n"
    )
    assert config.policies["orders"].bulkhead == BulkheadSpec(max_concurrent=10, max_queue=5)
    assert config.policies["default"].breaker is not None
    assert config.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("policies:\n  orders:\n    bulkhead: {max_concurrent: 0}\n", ":3: policies.orders"),
        ("policies:\n  orders:\n    bulkhed: {}\n", "policies.orders.bulkhed"),
        ("policies: [1]\n", "policies: must map"),
        ("redis_url: 7\n", "redis_url: must be a URL"),
    ],
)
def test_a_bad_policy_in_the_file_names_where(text: str, where: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, source="gw.yaml")
    assert where in caught.value.message


@pytest.fixture(scope="module")
def control() -> CrosswayServer:
    return shared_server("memory")


async def until(client: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    for _ in range(200):
        response = await client.get(path)
        if response.status_code == status:
            return response
        await asyncio.sleep(0.025)
    raise AssertionError(f"{path} never answered {status}: {response.text}")


@pytest.mark.integration
async def test_a_policy_put_on_the_control_plane_reaches_a_running_gateway(
    control: CrosswayServer,
) -> None:
    unique = uuid.uuid4().hex[:8]
    service, route = f"pf-svc-{unique}", f"pf-{unique}"
    settings = GatewaySettings(
        control_plane=control.url, host="127.0.0.1", port=0, admin_port=0, telemetry=False
    )
    async with uvicorn_upstream() as up, httpx.AsyncClient(base_url=control.url) as cp:
        document = {
            "match": {"path_prefix": f"/{route}"},
            "backends": [{"service": service}],
            "rewrite": {"prefix": "/"},
        }
        assert (await cp.put(f"/v1/routes/{route}", json=document)).status_code == 200
        instance = f"/v1/services/{service}/instances/i1"
        assert (
            await cp.put(instance, json={"address": "127.0.0.1", "port": up})
        ).status_code == 200
        started: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(serve_gateway(settings, started=started))
        try:
            port, _ = await asyncio.wait_for(started, 10)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as proxy:
                await until(proxy, f"/{route}/x", 200)
                policy = {"breaker": {"failures": 1, "open_for": "60s"}}
                assert (await cp.put(f"/v1/policies/{service}", json=policy)).status_code == 200
                refused = None
                for _ in range(200):  # each failure trips the breaker once the policy is in
                    await proxy.get(f"/{route}/status?code=500")
                    answer = await proxy.get(f"/{route}/x")
                    if answer.status_code == 503:
                        refused = answer
                        break
                    await asyncio.sleep(0.025)
                assert refused is not None
                assert refused.headers["x-crossway-overloaded"] == "breaker_open"
                assert (await cp.delete(f"/v1/policies/{service}")).status_code in (200, 204)
                await until(proxy, f"/{route}/x", 200)  # the guard went with the policy
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await cp.delete(instance)
            await cp.delete(f"/v1/routes/{route}")


@pytest.mark.integration
async def test_the_admin_port_shows_policies_and_limits(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "routes:\n"
        "  r: {match: {path_prefix: /}, backends: [{service: orders}]}\n"
        "policies:\n"
        "  orders: {bulkhead: {max_concurrent: 7}}\n"
    )
    settings = GatewaySettings(
        config_path=path, host="127.0.0.1", port=0, admin_port=0, telemetry=False
    )
    started: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve_gateway(settings, started=started))
    try:
        port, admin_port = await asyncio.wait_for(started, 10)
        async with httpx.AsyncClient() as client:
            no_instances = await client.get(f"http://127.0.0.1:{port}/x")
            dump = (await client.get(f"http://127.0.0.1:{admin_port}/config_dump")).json()
            stats = (await client.get(f"http://127.0.0.1:{admin_port}/stats")).text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert no_instances.json()["error"]["code"] == "no_healthy_upstream"
    assert dump["policies"] == {"orders": {"bulkhead": {"max_concurrent": 7}}}
    for name in ("upstream_overloaded", "breaker_trips", "retry_budget_refused", "rate_limited"):
        assert f"# TYPE crossway_gateway_{name}_total counter" in stats
