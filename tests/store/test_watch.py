"""Watch delivery under pressure: slow consumers fall back to history and
catch up without losing or reordering events."""

from __future__ import annotations

import asyncio

from crossway.store.memory import open_memory_store
from crossway.store.watch import EventLog


async def test_a_slow_watcher_catches_up_from_history() -> None:
    store = open_memory_store()
    store._hub._buffer_limit = 10  # make overflow happen quickly
    watch = store.watch("/", after_revision=0)
    fast = store.watch("/", after_revision=0)
    for i in range(500):
        await store.put(f"/k{i % 7}", str(i).encode())
    got = []
    while len(got) < 500:
        got.extend(await asyncio.wait_for(watch.next_batch(), 5))
    assert [int(e.kv.value) for e in got] == list(range(500))
    await store.put("/k", b"live")
    assert (await asyncio.wait_for(watch.__anext__(), 5)).kv.value == b"live"
    assert (await asyncio.wait_for(fast.next_batch(), 5))[0].kv.value == b"0"
    await watch.aclose()
    await fast.aclose()
    await store.close()


async def test_closing_a_watch_ends_iteration() -> None:
    store = open_memory_store()
    watch = store.watch("/")

    async def consume() -> int:
        return len([e async for e in watch])

    task = asyncio.ensure_future(consume())
    await store.put("/a", b"1")
    await asyncio.sleep(0)
    await watch.aclose()
    assert await asyncio.wait_for(task, 5) == 1
    await store.close()


async def test_closing_the_store_ends_watches_with_an_error() -> None:
    from crossway.store import StoreClosed

    store = open_memory_store()
    watch = store.watch("/")
    task = asyncio.ensure_future(watch.__anext__())
    await asyncio.sleep(0)
    await store.close()
    try:
        await asyncio.wait_for(task, 5)
    except StoreClosed:
        pass
    else:
        raise AssertionError("a watch on a closed store must fail")


def test_event_log_bounds_memory_and_answers_ranges() -> None:
    from crossway.store.types import Event, EventType, KeyValue

    log = EventLog(limit=100)
    for rev in range(1, 5001):
        log.append([Event(EventType.PUT, KeyValue(f"/k{rev % 3}", b"", rev, rev, 1))])
    assert log.oldest_revision() == 4901
    assert log.covers(4900, 5000)
    assert not log.covers(4899, 5000)
    events = log.between("/k1", 4950, 4960)
    assert [e.kv.mod_revision for e in events] == [r for r in range(4951, 4961) if r % 3 == 1]


async def test_auto_compaction_keeps_the_newest_revisions() -> None:
    store = open_memory_store(retain_revisions=100)
    for i in range(300):
        await store.put("/k", str(i).encode())
    await store.auto_compact()
    assert await store.compacted_revision() == 200
    await store.close()
