"""The etcd backend beyond the shared conformance suite: resuming watches across
an etcd restart, errors while etcd is down, lease TTL rounding, the mapping of
the store's types onto etcd's messages, and the pure watch cursor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aetcd import rpc
from hypothesis import given
from hypothesis import strategies as st

from crossway.core.errors import CrosswayError, InvalidArgument
from crossway.store import (
    CompactedError,
    Compare,
    Delete,
    DeleteResult,
    Event,
    EventType,
    Get,
    GetResult,
    KeyValue,
    LeaseNotFound,
    Put,
    StoreClosed,
    StoreUnavailable,
)
from crossway.store.etcd import EtcdStore, open_etcd_store
from crossway.store.etcd_codec import prefix_range, translate_rpc_error
from crossway.store.etcd_watch import Backoff, EtcdWatch, WatchCursor
from crossway.testing.etcd import EtcdProcess, etcd_binary, start_etcd
from crossway.testing.services import free_port, require

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def own_etcd() -> Iterator[EtcdProcess]:
    """A private etcd this test may stop and start."""
    require(etcd_binary() is not None, "etcd is not installed (run scripts/ensure-etcd)")
    etcd = start_etcd()
    yield etcd
    etcd.stop()


@pytest.fixture
async def etcd_store(etcd_server: EtcdProcess) -> AsyncIterator[EtcdStore]:
    store = await open_etcd_store([etcd_server.endpoint])
    yield store
    await store.close()


async def take(watch: Any, count: int, within: float = 20.0) -> list[Event]:
    events: list[Event] = []

    async def run() -> None:
        while len(events) < count:
            events.extend(await watch.next_batch())

    await asyncio.wait_for(run(), within)
    return events


async def until_up(store: EtcdStore, within: float = 20.0) -> None:
    """Retry a read until the restarted etcd answers through this store."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            await store.revision()
            return
        except StoreUnavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


# Restarts and outages


async def test_watch_resumes_after_etcd_restarts(own_etcd: EtcdProcess, ns: str) -> None:
    store = await open_etcd_store([own_etcd.endpoint])
    try:
        start = await store.revision()
        watch = store.watch(ns, after_revision=start)
        for i in range(5):
            await store.put(f"{ns}k{i}", str(i).encode())
        before = await take(watch, 2)  # the rest stays unread across the restart
        await asyncio.to_thread(own_etcd.halt)
        await asyncio.to_thread(own_etcd.resume)
        await until_up(store)
        for i in range(5, 10):
            await store.put(f"{ns}k{i}", str(i).encode())
        events = before + await take(watch, 10 - len(before))
        await watch.aclose()
    finally:
        await store.close()
    assert [e.kv.value for e in events] == [str(i).encode() for i in range(10)]
    assert [e.kv.mod_revision for e in events] == list(range(start + 1, start + 11))


async def test_calls_fail_with_store_unavailable_while_etcd_is_down(
    own_etcd: EtcdProcess, ns: str
) -> None:
    store = await open_etcd_store([own_etcd.endpoint], request_timeout=2.0)
    try:
        lease = await store.grant(30)
        await asyncio.to_thread(own_etcd.halt)
        for call in (
            store.get(ns + "k"),
            store.put(ns + "k", b"v"),
            store.txn([], [Put(ns + "k", b"v")]),
            store.keepalive(lease.id),
            store.range(ns),
        ):
            with pytest.raises(StoreUnavailable, match=r"etcd at http://127\.0\.0\.1:"):
                await call
        await asyncio.to_thread(own_etcd.resume)
        await until_up(store)
        assert (await store.put(ns + "k", b"back")).revision > 0
        assert await store.keepalive(lease.id) == 30
    finally:
        await store.close()


async def test_opening_an_absent_etcd_is_store_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable, match="cannot reach etcd") as error:
        await open_etcd_store([url], connect_timeout=0.3)
    assert url in str(error.value)


async def test_a_dead_endpoint_is_skipped(etcd_server: EtcdProcess, ns: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    store = await open_etcd_store([dead, etcd_server.endpoint], connect_timeout=0.3)
    try:
        await store.put(ns + "k", b"v")
        assert (await store.get(ns + "k")) is not None
    finally:
        await store.close()


@pytest.mark.parametrize("endpoint", ["https://127.0.0.1:2379", "http://", "unix:///tmp/x"])
async def test_malformed_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(InvalidArgument):
        await open_etcd_store([endpoint])


# Leases


async def test_lease_ttl_is_rounded_up_to_whole_seconds(etcd_store: EtcdStore) -> None:
    assert (await etcd_store.grant(2.2)).ttl == 3.0
    assert (await etcd_store.grant(7)).ttl == 7.0
    # etcd's own minimum is 1.5 s of election time, rounded up: 2 s.
    short = await etcd_store.grant(0.3)
    assert short.ttl == 2.0
    info = await etcd_store.lease_info(short.id)
    assert info.ttl == 2.0
    assert 0 <= info.remaining <= 2.0
    with pytest.raises(ValueError, match="positive"):
        await etcd_store.grant(0)


async def test_lease_info_lists_keys_and_unknown_leases_are_reported(
    etcd_store: EtcdStore, ns: str
) -> None:
    lease = await etcd_store.grant(10)
    await etcd_store.txn([], [Put(ns + "b", b"", lease.id), Put(ns + "a", b"", lease.id)])
    info = await etcd_store.lease_info(lease.id)
    assert info.keys == [ns + "a", ns + "b"]
    await etcd_store.revoke(lease.id)
    await etcd_store.revoke(lease.id)  # revoking twice is no error
    with pytest.raises(LeaseNotFound):
        await etcd_store.lease_info(lease.id)
    with pytest.raises(LeaseNotFound):
        await etcd_store.txn([], [Put(ns + "c", b"", lease.id)])


# Mapping onto etcd


async def test_delete_events_look_like_the_local_backends(etcd_store: EtcdStore, ns: str) -> None:
    created = await etcd_store.put(ns + "k", b"v")
    watch = etcd_store.watch(ns, after_revision=created.revision)
    deleted = await etcd_store.delete(ns + "k")
    (event,) = await take(watch, 1)
    await watch.aclose()
    assert event.type is EventType.DELETE
    assert event.kv == KeyValue(ns + "k", b"", 0, deleted.revision, 0, 0)
    assert event.prev is not None
    assert event.prev.value == b"v"


async def test_txn_results_and_prefix_ops(etcd_store: EtcdStore, ns: str) -> None:
    await etcd_store.put(ns + "p/1", b"1")
    await etcd_store.put(ns + "p/2", b"2")
    before = await etcd_store.revision()
    result = await etcd_store.txn(
        [Compare(ns + "p/1", "version", ">", 0)],
        [Get(ns + "p/", prefix=True, limit=1), Delete(ns + "p/", prefix=True), Delete(ns + "x")],
    )
    assert result.succeeded
    assert result.revision == before + 1
    got, gone, nothing = result.results
    assert isinstance(got, GetResult)
    assert [kv.key for kv in got.kvs] == [ns + "p/1"]
    assert isinstance(gone, DeleteResult)
    assert isinstance(nothing, DeleteResult)
    assert [kv.key for kv in gone.deleted] == [ns + "p/1", ns + "p/2"]
    assert nothing.revision == before
    assert nothing.deleted == []


async def test_compares_of_the_wrong_type_never_hold(etcd_store: EtcdStore, ns: str) -> None:
    await etcd_store.put(ns + "k", b"v")
    for compare in (Compare(ns + "k", "mod", "!=", b"x"), Compare(ns + "k", "value", "!=", 3)):
        result = await etcd_store.txn([compare], [Put(ns + "then", b"")])
        assert not result.succeeded


async def test_lease_compare(etcd_store: EtcdStore, ns: str) -> None:
    lease = await etcd_store.grant(10)
    await etcd_store.put(ns + "k", b"v", lease=lease.id)
    held = await etcd_store.txn([Compare(ns + "k", "lease", "==", lease.id)], [])
    assert held.succeeded


async def test_etcd_refuses_one_key_twice_in_a_txn(etcd_store: EtcdStore, ns: str) -> None:
    with pytest.raises(InvalidArgument, match="duplicate key"):
        await etcd_store.txn([], [Put(ns + "k", b"1"), Put(ns + "k", b"2")])


async def test_compacted_revision_is_found_when_another_client_compacts(
    etcd_server: EtcdProcess, etcd_store: EtcdStore, ns: str
) -> None:
    for i in range(5):
        await etcd_store.put(ns + "k", str(i).encode())
    target = await etcd_store.revision() - 2
    other = await open_etcd_store([etcd_server.endpoint])
    try:
        await other.compact(target)
        await other.compact(target - 1)  # already compacted: no error
        with pytest.raises(ValueError, match="future"):
            await other.compact(target + 10_000)
    finally:
        await other.close()
    assert await etcd_store.compacted_revision() == target
    stale = etcd_store.watch(ns, after_revision=target - 5)
    with pytest.raises(CompactedError) as error:
        await take(stale, 1)
    assert error.value.compacted_revision == target
    await stale.aclose()


# Lifecycle and cancellation


async def test_close_ends_watches_and_refuses_calls(etcd_server: EtcdProcess, ns: str) -> None:
    store = await open_etcd_store([etcd_server.endpoint])
    watch = store.watch(ns)
    await store.close()
    with pytest.raises(StoreClosed):
        await watch.next_batch()
    with pytest.raises(StoreClosed):
        await store.get(ns + "k")
    with pytest.raises(StoreClosed):
        await store.watch(ns).next_batch()
    await store.close()  # closing twice is fine


async def test_a_cancelled_reader_leaves_the_watch_intact(etcd_store: EtcdStore, ns: str) -> None:
    start = await etcd_store.revision()
    watch = etcd_store.watch(ns, after_revision=start)
    reader = asyncio.ensure_future(watch.next_batch())
    await asyncio.sleep(0.05)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await etcd_store.put(ns + "k", b"v")
    (event,) = await take(watch, 1)
    assert event.kv.value == b"v"
    await watch.aclose()
    with pytest.raises(StopAsyncIteration):
        await watch.__anext__()


async def test_slow_consumer_gets_everything(etcd_server: EtcdProcess, ns: str) -> None:
    store = await open_etcd_store([etcd_server.endpoint], watch_buffer=10)
    try:
        start = await store.revision()
        async with store.watch(ns, after_revision=start) as watch:
            await asyncio.gather(*(store.put(f"{ns}{i}", b"") for i in range(200)))
            await asyncio.sleep(0.2)  # the pump is parked on a full buffer meanwhile
            events = await take(watch, 200)
    finally:
        await store.close()
    assert [e.revision for e in events] == list(range(start + 1, start + 201))


# The watch driver against a scripted stream


class FakeCall:
    """A Watch call that answers from a script; an exception in it is raised."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.sent: list[Any] = []
        self.cancelled = False

    async def write(self, request: Any) -> None:
        self.sent.append(request)

    async def read(self) -> Any:
        if not self.script:
            await asyncio.Event().wait()
        item = self.script.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True


def _response(*revisions: int, compacted: int = 0) -> Any:
    events = [
        rpc.Event(type=rpc.Event.PUT, kv=rpc.KeyValue(key=b"/w/k", value=b"%d" % r, mod_revision=r))
        for r in revisions
    ]
    header = rpc.ResponseHeader(revision=max(revisions, default=0) + 100)
    return rpc.WatchResponse(header=header, events=events, compact_revision=compacted)


def _created(revision: int) -> Any:
    return rpc.WatchResponse(header=rpc.ResponseHeader(revision=revision), created=True)


async def test_watch_resumes_after_the_last_received_revision_then_reports_compaction() -> None:
    broken = rpc.AioRpcError(rpc.StatusCode.UNAVAILABLE, details="Socket closed")
    calls = [
        FakeCall([_created(10), _response(11, 11), _response(12), broken]),
        # A replay of revision 12 is dropped, not delivered twice.
        FakeCall([_created(12), _response(12, 13), _response(14), broken]),
        FakeCall([_created(14), _response(compacted=20)]),
    ]
    opened: list[bool] = []

    def opener(after_failure: bool) -> tuple[Any, str]:
        opened.append(after_failure)
        return calls[len(opened) - 1], "fake"

    watch = EtcdWatch(opener, "/w/", 10)
    events = await take(watch, 5)
    with pytest.raises(CompactedError) as error:
        await watch.next_batch()
    await watch.aclose()
    assert [e.revision for e in events] == [11, 11, 12, 13, 14]
    assert [c.sent[0].create_request.start_revision for c in calls] == [11, 13, 15]
    assert error.value.compacted_revision == 20
    assert error.value.requested == 14
    assert opened == [False, True, True]
    assert all(c.cancelled for c in calls)


async def test_watch_from_now_resumes_after_the_creation_revision() -> None:
    reset = rpc.AioRpcError(rpc.StatusCode.INTERNAL, details="RST_STREAM")
    calls = [FakeCall([_created(42), reset]), FakeCall([_created(50), _response(43)])]

    def opener(after_failure: bool) -> tuple[Any, str]:
        return calls[0] if calls[0].script else calls[1], "fake"

    watch = EtcdWatch(opener, "/w/", None)
    (event,) = await take(watch, 1)
    await watch.aclose()
    assert event.revision == 43
    assert [c.sent[0].create_request.start_revision for c in calls] == [0, 43]


async def test_a_refused_watch_ends_with_the_error() -> None:
    denied = rpc.AioRpcError(rpc.StatusCode.PERMISSION_DENIED, details="no")
    watch = EtcdWatch(lambda _: (FakeCall([denied]), "fake"), "/w/", 1)
    with pytest.raises(CrosswayError, match="refused access"):
        await watch.next_batch()
    await watch.aclose()


async def test_a_watch_refused_at_creation_ends_but_a_cancelled_one_resumes() -> None:
    refused = rpc.WatchResponse(created=True, canceled=True, cancel_reason="permission denied")
    watch = EtcdWatch(lambda _: (FakeCall([refused]), "fake"), "/w/", 1)
    with pytest.raises(InvalidArgument, match="permission denied"):
        await watch.next_batch()
    await watch.aclose()

    no_leader = rpc.WatchResponse(canceled=True, cancel_reason="etcdserver: no leader")
    calls = [FakeCall([_created(5), no_leader]), FakeCall([_created(5), _response(6)])]
    watch = EtcdWatch(lambda _: (calls.pop(0), "fake"), "/w/", 5)
    (event,) = await take(watch, 1)
    await watch.aclose()
    assert event.revision == 6


async def test_a_stream_that_just_ends_is_resumed() -> None:
    class Ending(FakeCall):
        async def read(self) -> Any:
            return None if not self.script else self.script.pop(0)  # grpc's EOF

    calls = [Ending([_created(1), _response(2)]), FakeCall([_created(2), _response(3)])]
    watch = EtcdWatch(lambda _: (calls.pop(0), "fake"), "/w/", 1)
    events = await take(watch, 2)
    await watch.aclose()
    assert [e.revision for e in events] == [2, 3]


# Pure parts


@given(
    st.lists(st.integers(1, 4), max_size=30),
    st.lists(st.integers(0, 5), max_size=30),
)
def test_cursor_never_repeats_or_reorders(sizes: list[int], replays: list[int]) -> None:
    """Responses of increasing revisions, each possibly followed by a replay of
    earlier events (what a resume from a stale revision would send), come out
    exactly once, in order."""
    cursor = WatchCursor(0)
    sent: list[Event] = []
    received: list[Event] = []
    for i, size in enumerate(sizes):
        revision = i + 1
        batch = [_event(revision) for _ in range(size)]
        sent.extend(batch)
        received.extend(cursor.accept(batch))
        back = replays[i] if i < len(replays) else 0
        received.extend(cursor.accept(sent[-back:] if back else []))
        assert cursor.start_revision() == revision + 1
    assert received == sent


def test_cursor_from_now_and_progress() -> None:
    cursor = WatchCursor(None)
    assert cursor.start_revision() == 0
    cursor.progress(50)  # no position yet: a progress note cannot set one
    cursor.created(42)
    cursor.created(99)  # a resume's `created` does not move it
    assert cursor.start_revision() == 43
    cursor.progress(45)
    cursor.progress(44)
    assert cursor.start_revision() == 46


@given(st.lists(st.floats(0, 0.999), min_size=1, max_size=40))
def test_backoff_grows_to_its_cap_and_resets(jitters: list[float]) -> None:
    backoff = Backoff(initial=0.05, maximum=2.0)
    delays = [backoff.next_delay(j) for j in jitters]
    assert all(0.025 <= d <= 2.0 for d in delays)
    backoff.reset()
    assert backoff.next_delay(0.0) == 0.025


def test_prefix_ranges() -> None:
    assert prefix_range("/a/") == (b"/a/", b"/a0")
    assert prefix_range("") == (b"\0", b"\0")
    assert prefix_range("a\udcff") == (b"a\xff", b"b")
    assert prefix_range("\udcff\udcff") == (b"\xff\xff", b"\0")


def test_grpc_failures_become_store_errors() -> None:
    down = translate_rpc_error("UNAVAILABLE", "connection refused", where="http://h:1")
    assert isinstance(down, StoreUnavailable)
    assert "http://h:1" in down.message
    assert isinstance(translate_rpc_error("DEADLINE_EXCEEDED", "", where="x"), StoreUnavailable)
    assert isinstance(translate_rpc_error("UNKNOWN", "boom", where="x"), StoreUnavailable)
    lease = translate_rpc_error(
        "NOT_FOUND", "etcdserver: requested lease not found", where="x", lease=7
    )
    assert isinstance(lease, LeaseNotFound)
    assert lease.lease == 7
    refused = translate_rpc_error("INVALID_ARGUMENT", "too many operations", where="x")
    assert isinstance(refused, InvalidArgument)


def _event(revision: int) -> Event:
    return Event(EventType.PUT, KeyValue("/w/k", b"", revision, revision, 1))
