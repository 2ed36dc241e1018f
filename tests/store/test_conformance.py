"""The conformance suite: what every Store backend must do alike."""

from __future__ import annotations

import asyncio
import time

import pytest

from crossway.store import (
    CompactedError,
    Compare,
    CompareFailed,
    Delete,
    Event,
    EventType,
    Get,
    GetResult,
    LeaseNotFound,
    Put,
    Store,
)

pytestmark = pytest.mark.timeout(120)


async def collect(watch: object, count: int, timeout: float = 30.0) -> list[Event]:
    events: list[Event] = []

    async def run() -> None:
        while len(events) < count:
            events.extend(await watch.next_batch())  # type: ignore[attr-defined]

    await asyncio.wait_for(run(), timeout)
    return events


async def test_put_get_and_revisions(store: Store, ns: str) -> None:
    start = await store.revision()
    first = await store.put(ns + "a", b"1")
    assert first.revision == start + 1
    assert first.prev is None
    second = await store.put(ns + "a", b"2")
    assert second.revision == start + 2
    assert second.prev is not None
    assert second.prev.value == b"1"
    kv = await store.get(ns + "a")
    assert kv is not None
    assert (kv.value, kv.version) == (b"2", 2)
    assert kv.create_revision == start + 1
    assert kv.mod_revision == start + 2
    assert await store.get(ns + "missing") is None
    assert await store.revision() == start + 2


async def test_range_is_sorted_and_bounded_by_prefix(store: Store, ns: str) -> None:
    for key in ["b", "a", "c/1", "c/0", "d"]:
        await store.put(ns + key, key.encode())
    await store.put(ns[:-1] + "x", b"outside")
    result = await store.range(ns + "c/")
    assert [kv.key for kv in result.kvs] == [ns + "c/0", ns + "c/1"]
    everything = await store.range(ns)
    assert [kv.key for kv in everything.kvs] == [ns + k for k in ["a", "b", "c/0", "c/1", "d"]]
    assert everything.revision == await store.revision()
    limited = await store.range(ns, limit=2)
    assert [kv.key for kv in limited.kvs] == [ns + "a", ns + "b"]


async def test_compare_and_set(store: Store, ns: str) -> None:
    created = await store.put(ns + "k", b"v1", if_absent=True)
    with pytest.raises(CompareFailed) as failed:
        await store.put(ns + "k", b"again", if_absent=True)
    assert failed.value.current is not None
    assert failed.value.current.mod_revision == created.revision
    with pytest.raises(CompareFailed):
        await store.put(ns + "k", b"v2", if_mod_revision=created.revision + 100)
    updated = await store.put(ns + "k", b"v2", if_mod_revision=created.revision)
    assert updated.revision > created.revision
    with pytest.raises(CompareFailed):
        await store.delete(ns + "k", if_mod_revision=created.revision)
    deleted = await store.delete(ns + "k", if_mod_revision=updated.revision)
    assert [kv.value for kv in deleted.deleted] == [b"v2"]
    assert (await store.put(ns + "k", b"v3", if_mod_revision=0)).revision > deleted.revision


async def test_delete_and_delete_prefix(store: Store, ns: str) -> None:
    await store.put(ns + "x/1", b"1")
    await store.put(ns + "x/2", b"2")
    await store.put(ns + "y", b"3")
    before = await store.revision()
    nothing = await store.delete(ns + "absent")
    assert nothing.deleted == []
    assert await store.revision() == before, "deleting nothing must not take a revision"
    gone = await store.delete_prefix(ns + "x/")
    assert sorted(kv.key for kv in gone.deleted) == [ns + "x/1", ns + "x/2"]
    assert gone.revision == before + 1, "one delete_prefix is one revision"
    assert [kv.key for kv in (await store.range(ns)).kvs] == [ns + "y"]
    recreated = await store.put(ns + "x/1", b"new")
    kv = await store.get(ns + "x/1")
    assert kv is not None
    assert kv.version == 1
    assert kv.create_revision == recreated.revision


async def test_txn_then_and_else(store: Store, ns: str) -> None:
    await store.put(ns + "flag", b"on")
    start = await store.revision()
    result = await store.txn(
        [Compare.value_is(ns + "flag", b"on")],
        [Put(ns + "a", b"1"), Put(ns + "b", b"2"), Get(ns + "flag")],
        [Put(ns + "else", b"x")],
    )
    assert result.succeeded
    assert result.revision == start + 1, "a multi-key transaction is one revision"
    got = result.results[2]
    assert isinstance(got, GetResult)
    assert got.kvs[0].value == b"on"
    result = await store.txn(
        [Compare.value_is(ns + "flag", b"off")],
        [Put(ns + "never", b"1")],
        [Put(ns + "else", b"x"), Delete(ns + "a")],
    )
    assert not result.succeeded
    assert await store.get(ns + "never") is None
    assert await store.get(ns + "else") is not None
    assert await store.get(ns + "a") is None
    a_absent = await store.txn([Compare.absent(ns + "a")], [Put(ns + "a", b"again")])
    assert a_absent.succeeded


async def test_concurrent_cas_increments_are_exact(store: Store, ns: str) -> None:
    key = ns + "counter"
    await store.put(key, b"0")
    workers, per_worker = 50, 20  # 1,000 increments in all

    async def increment() -> None:
        done = 0
        while done < per_worker:
            kv = await store.get(key)
            assert kv is not None
            try:
                await store.put(
                    key, str(int(kv.value) + 1).encode(), if_mod_revision=kv.mod_revision
                )
            except CompareFailed:
                continue
            done += 1

    await asyncio.gather(*(increment() for _ in range(workers)))
    kv = await store.get(key)
    assert kv is not None
    assert int(kv.value) == workers * per_worker


async def test_watch_sees_every_event_in_order(store: Store, ns: str) -> None:
    start = await store.revision()
    watch = store.watch(ns, after_revision=start)
    total = 10_000
    reader = asyncio.ensure_future(collect(watch, total, timeout=90))
    batch = 100
    for base in range(0, total, batch):
        await asyncio.gather(
            *(store.put(f"{ns}k{(base + i) % 97}", str(base + i).encode()) for i in range(batch))
        )
    events = await reader
    await watch.aclose()
    assert len(events) == total
    revisions = [e.kv.mod_revision for e in events]
    assert revisions == sorted(revisions)
    assert len(set(revisions)) == total
    assert revisions[0] == start + 1
    assert revisions[-1] == start + total
    assert sorted(int(e.kv.value) for e in events) == list(range(total))


async def test_watch_from_the_past_replays_history(store: Store, ns: str) -> None:
    start = await store.revision()
    for i in range(5):
        await store.put(ns + "h", str(i).encode())
    await store.delete(ns + "h")
    late = store.watch(ns, after_revision=start + 2)
    events = await collect(late, 4)
    await late.aclose()
    assert [e.type for e in events] == [EventType.PUT] * 3 + [EventType.DELETE]
    assert [e.kv.value for e in events[:3]] == [b"2", b"3", b"4"]
    assert events[-1].kv.key == ns + "h"
    assert events[-1].kv.mod_revision == start + 6


async def test_watch_only_sees_its_prefix_and_starts_now_by_default(store: Store, ns: str) -> None:
    await store.put(ns + "a/old", b"before the watch")
    watch = store.watch(ns + "a/")
    await asyncio.sleep(0.2)  # etcd registers the watch asynchronously
    await store.put(ns + "b/1", b"other prefix")
    await store.put(ns + "a/1", b"mine")
    events = await collect(watch, 1)
    await watch.aclose()
    assert [(e.kv.key, e.kv.value) for e in events] == [(ns + "a/1", b"mine")]


async def test_transaction_events_arrive_together_in_op_order(store: Store, ns: str) -> None:
    start = await store.revision()
    watch = store.watch(ns, after_revision=start)
    await store.txn([], [Put(ns + "z", b"1"), Put(ns + "a", b"2"), Put(ns + "m", b"3")])
    events = await collect(watch, 3)
    await watch.aclose()
    assert [e.kv.key for e in events] == [ns + "z", ns + "a", ns + "m"]
    assert {e.kv.mod_revision for e in events} == {start + 1}


async def test_lease_keepalive_and_revoke(store: Store, ns: str) -> None:
    lease = await store.grant(10)
    assert lease.ttl >= 10
    await store.put(ns + "a", b"1", lease=lease.id)
    await store.put(ns + "b", b"2", lease=lease.id)
    await store.put(ns + "c", b"3")
    info = await store.lease_info(lease.id)
    assert sorted(info.keys) == [ns + "a", ns + "b"]
    assert 0 < info.remaining <= info.ttl
    assert await store.keepalive(lease.id) >= 10
    start = await store.revision()
    watch = store.watch(ns, after_revision=start)
    await store.revoke(lease.id)
    events = await collect(watch, 2)
    await watch.aclose()
    assert {(e.type, e.kv.key) for e in events} == {
        (EventType.DELETE, ns + "a"),
        (EventType.DELETE, ns + "b"),
    }
    assert len({e.kv.mod_revision for e in events}) == 1, "a lease's keys go in one revision"
    assert [kv.key for kv in (await store.range(ns)).kvs] == [ns + "c"]
    with pytest.raises(LeaseNotFound):
        await store.keepalive(lease.id)
    with pytest.raises(LeaseNotFound):
        await store.put(ns + "d", b"4", lease=lease.id)


async def test_lease_expiry_deletes_keys_and_emits_deletes(store: Store, ns: str) -> None:
    lease = await store.grant(2)
    await store.put(ns + "session", b"x", lease=lease.id)
    kept = await store.grant(2)
    await store.put(ns + "kept", b"y", lease=kept.id)
    watch = store.watch(ns)
    started = time.monotonic()
    deadline = started + lease.ttl + 4
    while time.monotonic() < deadline and await store.get(ns + "session") is not None:
        await store.keepalive(kept.id)
        await asyncio.sleep(0.2)
    assert await store.get(ns + "session") is None, "the key outlived its lease"
    assert time.monotonic() - started >= 1.0, "the lease expired too early"
    assert await store.get(ns + "kept") is not None, "a renewed lease expired"
    events = await collect(watch, 1)
    await watch.aclose()
    assert (events[0].type, events[0].kv.key) == (EventType.DELETE, ns + "session")
    with pytest.raises(LeaseNotFound):
        await store.keepalive(lease.id)


async def test_unknown_lease_is_refused(store: Store, ns: str) -> None:
    with pytest.raises(LeaseNotFound):
        await store.put(ns + "k", b"v", lease=0x1234ABCD)
    with pytest.raises(LeaseNotFound):
        await store.keepalive(0x1234ABCD)
    assert await store.get(ns + "k") is None


async def test_compaction_tells_watchers_to_relist(store: Store, ns: str) -> None:
    first = await store.put(ns + "k", b"1")
    await store.put(ns + "k", b"2")
    third = await store.put(ns + "k", b"3")
    await store.compact(third.revision - 1)
    assert await store.compacted_revision() >= third.revision - 1
    stale = store.watch(ns, after_revision=first.revision - 1)
    with pytest.raises(CompactedError) as error:
        await collect(stale, 1, timeout=10)
    assert error.value.compacted_revision >= third.revision - 1
    await stale.aclose()
    fresh = store.watch(ns, after_revision=third.revision - 1)
    events = await collect(fresh, 1)
    await fresh.aclose()
    assert events[0].kv.value == b"3"
