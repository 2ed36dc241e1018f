from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from crossway.sdk.client import Client
from crossway.sdk.control import ControlPlane, ControlPlaneError
from crossway.sdk.discovery import DiscoveryCache
from crossway.sdk.settings import ClientSettings, InvalidSettings
from crossway.testing.server import CrosswayServer, shared_server, start_server

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> CrosswayServer:
    return shared_server("memory")  # one for every module; names here are this module's


def instances(url: str, service: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = httpx2.get(f"{url}/v1/services/{service}", timeout=5).json()
    return found


def make(server: CrosswayServer, tmp_path: Path, **kw: Any) -> Client:
    kw.setdefault("address", "127.0.0.1")
    return Client(url=server.url, cache_dir=tmp_path / "cache", **kw)


async def test_registers_on_start_and_deregisters_on_stop(
    server: CrosswayServer, tmp_path: Path
) -> None:
    client = make(
        server, tmp_path, service="cl-orders", port=8080, zone="eu-1", labels={"version": "v2"}
    )
    assert instances(server.url, "cl-orders") == []
    await client.start()
    try:
        found = instances(server.url, "cl-orders")
        assert [i["id"] for i in found] == [client.instance_id]
        assert found[0]["metadata"] == {"version": "v2"}
        assert found[0]["zone"] == "eu-1"
        assert found[0]["lease"] == client.lease
        assert client.registrations == 1
        assert client.labels == {"version": "v2"}
    finally:
        await client.stop()
    assert instances(server.url, "cl-orders") == []
    assert client.lease is not None  # the last lease stays readable


async def test_async_with_and_no_task_left_behind(server: CrosswayServer, tmp_path: Path) -> None:
    before = asyncio.all_tasks()
    async with make(server, tmp_path, service="cl-with", port=8081) as client:
        assert client.started
        await client.discovery.instances("cl-with")
        assert len(asyncio.all_tasks() - before) >= 2  # keepalive + discovery
    assert asyncio.all_tasks() - before == set()
    assert instances(server.url, "cl-with") == []


async def test_default_instance_id_names_this_process(
    server: CrosswayServer, tmp_path: Path
) -> None:
    async with make(server, tmp_path, service="cl-pid", port=8082) as client:
        assert client.instance_id.startswith("cl-pid-")
        assert client.instance_id.endswith(f"-{os.getpid()}")


async def test_register_false_registers_nothing(server: CrosswayServer, tmp_path: Path) -> None:
    async with make(server, tmp_path, service="cl-quiet", register=False) as client:
        assert client.lease is None
        assert instances(server.url, "cl-quiet") == []


async def test_missing_service_or_port_fails_start_cleanly(
    server: CrosswayServer, tmp_path: Path
) -> None:
    before = asyncio.all_tasks()
    client = make(server, tmp_path, port=8080)
    with pytest.raises(InvalidSettings, match="service"):
        await client.start()
    client = make(server, tmp_path, service="cl-noport")
    with pytest.raises(InvalidSettings, match="port"):
        await client.start()
    assert asyncio.all_tasks() - before == set()


async def test_refusal_fails_start(tmp_path: Path) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        error = {"error": {"code": "unauthorized", "message": "the token is not valid"}}
        return httpx2.Response(401, json=error)

    client = Client(
        service="cl-denied",
        port=1,
        address="127.0.0.1",
        cache_dir=tmp_path,
        transport=httpx2.MockTransport(handler),
    )
    with pytest.raises(ControlPlaneError, match="token"):
        await client.start()


async def test_started_once(server: CrosswayServer, tmp_path: Path) -> None:
    client = make(server, tmp_path, register=False)
    await client.start()
    with pytest.raises(RuntimeError, match="already started"):
        await client.start()
    await client.stop()
    await client.stop()  # idempotent
    with pytest.raises(RuntimeError, match="already stopped"):
        await client.start()


def test_construction_starts_nothing_and_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CROSSWAY_SERVICE", "from-env")
    monkeypatch.setenv("CROSSWAY_PORT", "9000")
    client = Client(address="127.0.0.1")  # no running loop needed
    assert client.settings.service == "from-env"
    assert client.settings.port == 9000
    base = ClientSettings(service="base", address="127.0.0.1")
    assert Client(settings=base, zone="eu-2").settings.zone == "eu-2"
    assert Client(settings=base).settings is base


def test_own_metrics_registry_per_client() -> None:
    a, b = Client(address="127.0.0.1"), Client(address="127.0.0.1")
    assert a.metrics_registry is not b.metrics_registry


def test_http_and_bind_delegate_to_their_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    transport = types.ModuleType("crossway.sdk.transport")
    config = types.ModuleType("crossway.sdk.config")
    calls: list[tuple[str, Any]] = []
    transport.async_client = lambda c, **kw: calls.append(("async", kw)) or "A"  # type: ignore[attr-defined]
    transport.sync_client = lambda c, **kw: calls.append(("sync", kw)) or "S"  # type: ignore[attr-defined]
    config.bind = lambda c, m, k, **kw: calls.append(("bind", (m, k, kw))) or "B"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "crossway.sdk.transport", transport)
    monkeypatch.setitem(sys.modules, "crossway.sdk.config", config)
    client = Client(address="127.0.0.1")
    assert client.http(timeout=3) == "A"
    assert client.http_sync() == "S"
    assert client.bind(dict, "app.yaml") == "B"
    assert calls == [
        ("async", {"timeout": 3}),
        ("sync", {}),
        (
            "bind",
            (dict, "app.yaml", {"group": "DEFAULT_GROUP", "namespace": None, "on_change": None}),
        ),
    ]


async def eventually(check: Callable[[], bool], within: float) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def put_instance(url: str, service: str, iid: str) -> None:
    body = {"address": "127.0.0.1", "port": 7000, "ttl": "60s"}
    httpx2.put(f"{url}/v1/services/{service}/instances/{iid}", json=body, timeout=5)


async def test_memory_control_plane_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The control plane (memory store) stops, then comes back empty on the
    same port. Meanwhile discovery keeps serving the last instances (stale,
    metric set, one warning), a fresh process boots from the disk snapshot,
    and registration warns once. When it is back, the client registers again
    within about one TTL; the instance that never comes back is dropped by
    discovery only after its grace period."""
    caplog.set_level(logging.INFO, logger="crossway.sdk")
    plane = await asyncio.to_thread(start_server, store="memory")
    url, svc = plane.url, "cl-restart"
    client = Client(
        url=url, service=svc, port=8080, address="127.0.0.1", ttl="2s", cache_dir=tmp_path
    )
    fresh: DiscoveryCache | None = None
    try:
        for n in range(8):  # move the old store's revisions past where the new one will be
            await asyncio.to_thread(put_instance, url, "cl-pad", f"p-{n}")
        await asyncio.to_thread(put_instance, url, svc, "gone-1")
        await client.start()
        me = client.instance_id
        assert sorted(i.id for i in await client.discovery.instances(svc)) == sorted([me, "gone-1"])
        stale = {"service": svc}
        metric = client.metrics_registry.get_sample_value
        assert metric("crossway_sdk_discovery_stale", stale) == 0

        await asyncio.to_thread(plane.stop)
        await eventually(lambda: client.discovery.is_stale(svc), within=3.0)
        assert sorted(i.id for i in client.discovery.peek(svc) or []) == sorted([me, "gone-1"])
        assert metric("crossway_sdk_discovery_stale", stale) == 1
        await asyncio.sleep(0.5)  # several failed keepalives and reconnects
        assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 2

        fresh = DiscoveryCache(
            ControlPlane(ClientSettings(url=url, address="127.0.0.1")),
            cache_dir=tmp_path,
            rebuild_grace=1.0,
        )
        assert sorted(i.id for i in await fresh.instances(svc)) == sorted([me, "gone-1"])
        assert fresh.is_stale(svc)

        plane = await asyncio.to_thread(start_server, store="memory", port=plane.port)
        took = await eventually(lambda: client.registrations == 2, within=6.0)
        assert took < 2.0 + 1.0  # about one TTL
        assert [i["id"] for i in instances(url, svc)] == [me]
        # the new store lists only `me`; `gone-1` is kept (stale) for the grace…
        await eventually(lambda: provisional(fresh, svc), within=5.0)
        assert sorted(i.id for i in fresh.peek(svc) or []) == sorted([me, "gone-1"])
        # …and dropped after it
        await eventually(lambda: not fresh.is_stale(svc), within=5.0)
        assert [i.id for i in fresh.peek(svc) or []] == [me]
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await client.stop()
        if fresh is not None:
            await fresh.stop()
            await fresh.control.aclose()
        await asyncio.to_thread(plane.stop)


def provisional(cache: DiscoveryCache, service: str) -> bool:
    view = cache.view(service)
    return view is not None and view.provisional_until is not None


async def test_cancelled_stop_still_closes_everything(
    server: CrosswayServer, tmp_path: Path
) -> None:
    before = asyncio.all_tasks()
    client = make(server, tmp_path, service="cl-cancel", port=8083)
    client.leader("cl-cancel-lead", ttl="2s")
    await client.start()
    await client.discovery.instances("cl-cancel")
    stopping = asyncio.ensure_future(client.stop())
    await asyncio.sleep(0)  # let it begin
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert client.control.http.is_closed
    await asyncio.sleep(0.05)  # cancelled tasks finish on their own
    assert asyncio.all_tasks() - before == set()
