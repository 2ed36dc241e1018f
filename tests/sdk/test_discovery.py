from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from crossway.core.errors import InvalidArgument
from crossway.registry.model import Instance
from crossway.sdk.control import ControlPlane, SseEvent
from crossway.sdk.discovery import (
    DiscoveryCache,
    ServiceView,
    Snapshot,
    read_snapshot,
    snapshot_path,
    write_snapshot,
)
from crossway.sdk.settings import ClientSettings
from crossway.testing.server import CrosswayServer, shared_server
from crossway.testing.services import free_port

# -- the pure view -------------------------------------------------------------------


def inst(service: str, iid: str, port: int = 80, ttl: str | None = "10s") -> Instance:
    return Instance(service=service, id=iid, address="127.0.0.1", port=port, ttl=ttl)


def put(service: str, iid: str, port: int = 80, rev: int | None = None) -> SseEvent:
    value = msgspec.json.encode(inst(service, iid, port)).decode()
    data = {"type": "put", "key": f"/services/{service}/instances/{iid}", "value": value}
    return SseEvent("put", None if rev is None else str(rev), json.dumps(data))


def delete(service: str, iid: str, rev: int | None = None) -> SseEvent:
    data = {"type": "delete", "key": f"/services/{service}/instances/{iid}", "value": ""}
    return SseEvent("delete", None if rev is None else str(rev), json.dumps(data))


def test_listing_then_events() -> None:
    view = ServiceView("orders")
    assert view.listing([inst("orders", "a")], 5, now=0.0) is True
    assert view.apply(put("orders", "b", rev=6)) is True
    assert view.apply(put("orders", "b", rev=7)) is False  # same value: no change
    assert view.apply(put("orders", "b", port=81, rev=8)) is True
    assert view.apply(delete("orders", "a", rev=9)) is True
    assert view.apply(delete("orders", "a")) is False
    assert [(i.id, i.port) for i in view.current()] == [("b", 81)]
    assert view.index == 9
    assert view.updates == 4


def test_foreign_and_malformed_events_are_ignored() -> None:
    view = ServiceView("orders")
    view.listing([], 1, now=0.0)
    assert view.apply(put("orders2", "x")) is False
    assert view.apply(SseEvent("put", None, "not json")) is False
    no_value = json.dumps({"key": "/services/orders/instances/z"})
    assert view.apply(SseEvent("put", None, no_value)) is False
    assert view.current() == []
    bad_value = {"key": "/services/orders/instances/z", "value": "{]"}
    assert view.apply(SseEvent("put", None, json.dumps(bad_value))) is False


def test_a_listing_of_the_same_store_replaces_the_set() -> None:
    view = ServiceView("orders")
    view.listing([inst("orders", "a"), inst("orders", "b")], 5, now=0.0)
    view.stale = True
    assert view.listing([inst("orders", "b")], 9, now=1.0) is True
    assert [i.id for i in view.current()] == ["b"]
    assert view.stale is False


def test_a_replaced_store_keeps_missing_instances_for_a_ttl() -> None:
    view = ServiceView("orders")
    view.listing([inst("orders", "a", ttl="4s"), inst("orders", "b", ttl="2s")], 50, now=0.0)
    view.listing([inst("orders", "b")], 3, now=10.0)  # revisions went back: a new store
    assert {i.id for i in view.current()} == {"a", "b"}
    assert view.stale is True
    assert view.provisional_until == 14.0  # the longest TTL
    view.listing([inst("orders", "b")], 4, now=14.0)  # same new store, a TTL later
    assert [i.id for i in view.current()] == ["b"]
    assert view.stale is False
    assert view.provisional_until is None


def test_snapshot_restores_only_when_nothing_is_known() -> None:
    snap = Snapshot("orders", 7, 1.0, [inst("orders", "a")])
    view = ServiceView("orders")
    assert view.restore(snap) is True
    assert view.from_snapshot is True
    assert view.restore(Snapshot("orders", 8, 2.0, [])) is False
    assert [i.id for i in view.current()] == ["a"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcde"), st.integers(1, 3)), max_size=40))
def test_events_match_a_dictionary_model(ops: list[tuple[bool, str, int]]) -> None:
    view = ServiceView("s")
    view.listing([], 1, now=0.0)
    model: dict[str, int] = {}
    changes = 0
    for rev, (is_put, iid, port) in enumerate(ops, start=2):
        before = dict(model)
        if is_put:
            model[iid] = port
            changed = view.apply(put("s", iid, port, rev=rev))
        else:
            model.pop(iid, None)
            changed = view.apply(delete("s", iid, rev=rev))
        assert changed == (model != before)
        changes += changed
    assert {i.id: i.port for i in view.current()} == model
    assert view.updates == 1 + changes


@given(st.text(max_size=200), st.sampled_from(["put", "delete", "compacted", "x"]))
def test_arbitrary_event_data_never_raises(data: str, kind: str) -> None:
    view = ServiceView("s")
    view.apply(SseEvent(kind, None, data))


def test_snapshot_round_trip_is_atomic(tmp_path: Path) -> None:
    path = snapshot_path(tmp_path / "cache", "orders")
    snap = Snapshot("orders", 3, 1.5, [inst("orders", "a"), inst("orders", "b", 81)])
    write_snapshot(path, snap)
    write_snapshot(path, snap)
    assert read_snapshot(path) == snap
    assert [p.name for p in path.parent.iterdir()] == ["orders.json"]  # no temp files left


def test_unreadable_snapshot_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "orders.json"
    assert read_snapshot(path) is None
    path.write_text("{half")
    assert read_snapshot(path) is None
    assert "unreadable" in caplog.text


# -- the cache against a scripted control plane ------------------------------------


def sse_body(*events: SseEvent) -> bytes:
    out = b""
    for e in events:
        head = f"id: {e.id}\n" if e.id else ""
        out += f"{head}event: {e.event}\ndata: {e.data}\n\n".encode()
    return out


def scripted(
    tmp_path: Path, listings: list[tuple[list[Instance], int]], streams: list[bytes]
) -> tuple[DiscoveryCache, list[str]]:
    """A cache whose control plane answers the given listings and watch
    streams in turn (then refuses to connect)."""
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(f"{request.url.path}?{request.url.query.decode()}")
        if request.url.path == "/v1/watch" and streams:
            headers = {"content-type": "text/event-stream"}
            return httpx2.Response(200, content=streams.pop(0), headers=headers)
        if request.url.path.startswith("/v1/services/") and listings:
            found, index = listings.pop(0)
            body = msgspec.json.encode(found)
            return httpx2.Response(200, content=body, headers={"X-Crossway-Index": str(index)})
        raise httpx2.ConnectError("refused")

    settings = ClientSettings(address="127.0.0.1")
    control = ControlPlane(settings, transport=httpx2.MockTransport(handler))
    return DiscoveryCache(control, cache_dir=tmp_path, debounce=0.0), seen


async def eventually(check: Callable[[], bool], within: float = 3.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_compacted_lists_again_and_resumes_from_the_new_index(tmp_path: Path) -> None:
    cache, seen = scripted(
        tmp_path,
        listings=[([inst("s", "a")], 10), ([inst("s", "b")], 20)],
        streams=[sse_body(SseEvent("compacted", None, "{}")), sse_body(put("s", "c", rev=21))],
    )
    assert [i.id for i in await cache.instances("s")] == ["a"]
    await eventually(lambda: {i.id for i in cache.peek("s") or []} == {"b", "c"})
    await cache.stop()
    watches = [s for s in seen if s.startswith("/v1/watch")]
    assert "after=10" in watches[0]
    assert "after=20" in watches[1]


async def test_outage_keeps_the_set_and_marks_it_stale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, _ = scripted(tmp_path, listings=[([inst("s", "a")], 10)], streams=[b""])
    assert [i.id for i in await cache.instances("s")] == ["a"]
    await eventually(lambda: cache.is_stale("s"))
    await asyncio.sleep(0.3)  # several failed reconnects
    assert [i.id for i in cache.peek("s") or []] == ["a"]
    assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    await cache.stop()


async def test_subscribers_hear_changes_and_failures_do_not_spread(tmp_path: Path) -> None:
    cache, _ = scripted(
        tmp_path,
        listings=[([inst("s", "a")], 10)],
        streams=[sse_body(put("s", "b", rev=11), delete("s", "a", rev=12))],
    )
    heard: list[list[str]] = []

    def broken(service: str, found: list[Instance]) -> None:
        raise RuntimeError("subscriber bug")

    cache.subscribe("s", broken)
    unsubscribe = cache.subscribe("s", lambda s, found: heard.append(sorted(i.id for i in found)))
    await cache.start()
    await eventually(lambda: len(heard) >= 3)
    unsubscribe()
    await cache.stop()
    assert heard[:3] == [["a"], ["a", "b"], ["b"]]


async def test_bad_service_name_is_refused(tmp_path: Path) -> None:
    cache, _ = scripted(tmp_path, [], [])
    with pytest.raises(InvalidArgument, match="service"):
        await cache.instances("../etc")
    assert cache.peek("../etc") is None
    await cache.stop()


# -- against a real control plane ---------------------------------------------------

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> CrosswayServer:
    return shared_server("memory")  # one for every module; names here are this module's


def new_cache(url: str, cache_dir: Path) -> tuple[DiscoveryCache, CollectorRegistry]:
    registry = CollectorRegistry()
    control = ControlPlane(ClientSettings(url=url, address="127.0.0.1", timeout=2.0))
    return DiscoveryCache(control, cache_dir=cache_dir, metrics_registry=registry), registry


def register(url: str, service: str, iid: str, port: int = 80, ttl: str = "60s") -> None:
    body = {"address": "127.0.0.1", "port": port, "ttl": ttl}
    response = httpx2.put(f"{url}/v1/services/{service}/instances/{iid}", json=body, timeout=5)
    assert response.status_code == 200, response.text


def deregister(url: str, service: str, iid: str) -> None:
    httpx2.delete(f"{url}/v1/services/{service}/instances/{iid}", timeout=5)


def ids(found: list[Instance] | None) -> list[str]:
    return sorted(i.id for i in found or [])


async def test_a_new_instance_arrives_through_the_watch_quickly(
    server: CrosswayServer, tmp_path: Path
) -> None:
    cache, registry = new_cache(server.url, tmp_path)
    register(server.url, "disc-fast", "f-1")
    assert ids(await cache.instances("disc-fast")) == ["f-1"]
    started = time.monotonic()
    await asyncio.to_thread(register, server.url, "disc-fast", "f-2")
    await eventually(lambda: ids(cache.peek("disc-fast")) == ["f-1", "f-2"], within=1.0)
    assert time.monotonic() - started < 1.0
    await asyncio.to_thread(deregister, server.url, "disc-fast", "f-1")
    await eventually(lambda: ids(cache.peek("disc-fast")) == ["f-2"], within=1.0)
    assert (
        registry.get_sample_value("crossway_sdk_discovery_updates_total", {"service": "disc-fast"})
        == 3.0
    )
    assert (
        registry.get_sample_value("crossway_sdk_discovery_instances", {"service": "disc-fast"})
        == 1.0
    )
    await cache.stop()
    await cache.control.aclose()
    deregister(server.url, "disc-fast", "f-2")


async def test_a_fresh_cache_boots_from_the_snapshot_when_the_control_plane_is_down(
    server: CrosswayServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A restarted process (a new cache) that cannot reach its control plane
    serves the last set the previous one wrote to disk, and says it is stale.
    Stopping a live control plane under a cache is in test_client.py."""
    cache, _ = new_cache(server.url, tmp_path)
    register(server.url, "disc-snap", "s-1")
    register(server.url, "disc-snap", "s-2")
    assert ids(await cache.instances("disc-snap")) == ["s-1", "s-2"]
    await cache.stop()
    await cache.control.aclose()

    fresh, registry = new_cache(f"http://127.0.0.1:{free_port()}", tmp_path)
    assert ids(await fresh.instances("disc-snap")) == ["s-1", "s-2"]
    assert ids(fresh.peek("disc-snap")) == ["s-1", "s-2"]
    assert fresh.is_stale("disc-snap")
    assert registry.get_sample_value("crossway_sdk_discovery_stale", {"service": "disc-snap"}) == 1
    assert "from the disk snapshot" in caplog.text
    await fresh.stop()
    await fresh.control.aclose()
    deregister(server.url, "disc-snap", "s-1")
    deregister(server.url, "disc-snap", "s-2")


async def test_nothing_known_and_unreachable_serves_empty_and_stale(tmp_path: Path) -> None:
    cache, _ = new_cache(f"http://127.0.0.1:{free_port()}", tmp_path)
    assert await cache.instances("disc-none") == []
    assert cache.is_stale("disc-none")
    assert cache.peek("disc-none") is None
    await cache.stop()
    await cache.control.aclose()


async def test_stop_leaves_no_task_and_writes_pending_snapshots(
    server: CrosswayServer, tmp_path: Path
) -> None:
    before = asyncio.all_tasks()
    registry = CollectorRegistry()
    control = ControlPlane(ClientSettings(url=server.url, address="127.0.0.1"))
    cache = DiscoveryCache(control, cache_dir=tmp_path, metrics_registry=registry, debounce=60)
    register(server.url, "disc-stop", "s-1")
    await cache.instances("disc-stop")
    assert not snapshot_path(tmp_path, "disc-stop").exists()  # debounced
    await cache.stop()
    snapshot = read_snapshot(snapshot_path(tmp_path, "disc-stop"))
    assert snapshot is not None
    assert ids(snapshot.instances) == ["s-1"]
    assert asyncio.all_tasks() - before == set()
    with pytest.raises(RuntimeError, match="stopped"):
        await cache.instances("disc-other")
    await control.aclose()
    deregister(server.url, "disc-stop", "s-1")


async def test_subscribe_from_another_thread_follows_in_the_loop(tmp_path: Path) -> None:
    cache, _ = scripted(tmp_path, listings=[([inst("s", "a")], 10)], streams=[b""])
    await cache.start()
    heard: list[tuple[str, list[str]]] = []
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def callback(service: str, found: list[Instance]) -> None:
        threads.append(threading.get_ident())
        heard.append((service, [i.id for i in found]))

    await asyncio.to_thread(cache.subscribe, "s", callback)
    await eventually(lambda: bool(heard))
    await cache.stop()
    assert heard[0] == ("s", ["a"])
    assert set(threads) == {loop_thread}
