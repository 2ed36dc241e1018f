"""The feed that wakes long polls: one watch, per-key waiters, no lost change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crossway.config import Author, ConfigCenter, ConfigFeed, ref
from crossway.store import CompactedError, Store
from crossway.store.memory import open_memory_store

WHO = Author("t")


@pytest.fixture
async def feed(store: Store) -> AsyncIterator[ConfigFeed]:
    f = ConfigFeed(store)
    await f.start()
    yield f
    await f.close()


async def test_wakes_waiters_of_the_changed_key_only(
    feed: ConfigFeed, center: ConfigCenter, namespace: str
) -> None:
    a, b = ref(namespace, "g", "a"), ref(namespace, "g", "b")
    start = await center.store.revision()
    on_a = [feed.subscribe(a.entry_key, start) for _ in range(3)]
    on_b = feed.subscribe(b.entry_key, start)
    published = await center.publish(a, "x", fmt="text", author=WHO)
    kvs = await asyncio.wait_for(asyncio.gather(*on_a), 10)
    assert {kv.mod_revision for kv in kvs if kv is not None} == {published.revision}
    assert not on_b.done()
    feed.unsubscribe(b.entry_key, on_b)
    assert feed.waiting() == 0


async def test_a_change_seen_before_subscribing_resolves_at_once(
    feed: ConfigFeed, center: ConfigCenter, namespace: str
) -> None:
    a = ref(namespace, "g", "a")
    start = await center.store.revision()
    probe = feed.subscribe(a.entry_key, start)
    published = await center.publish(a, "x", fmt="text", author=WHO)
    await asyncio.wait_for(probe, 10)
    late = feed.subscribe(a.entry_key, start)
    assert late.done()
    result = late.result()
    assert result is not None
    assert result.mod_revision == published.revision
    assert not feed.subscribe(a.entry_key, published.revision).done()


async def test_close_wakes_everyone_with_none(store: Store, namespace: str) -> None:
    feed = ConfigFeed(store)
    await feed.start()
    waiter = feed.subscribe(ref(namespace, "g", "a").entry_key, await store.revision())
    await feed.close()
    assert waiter.result() is None


class _CompactingOnce:
    """A store whose first watch fails as if its history had been compacted."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failed = False

    def watch(self, prefix: str, *, after_revision: int | None = None) -> Any:
        if not self.failed:
            self.failed = True
            raise CompactedError(after_revision or 0, after_revision or 0)
        return self.inner.watch(prefix, after_revision=after_revision)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_compaction_makes_waiters_re_read() -> None:
    inner = open_memory_store()
    store = _CompactingOnce(inner)
    feed = ConfigFeed(store)
    waiter = feed.subscribe("/config/n/g/k", 0)
    await feed.start()
    assert await asyncio.wait_for(waiter, 10) is None
    center = ConfigCenter(inner)
    again = feed.subscribe("/config/n/g/k", await inner.revision())
    await center.publish(ref("n", "g", "k"), "x", fmt="text", author=WHO)
    assert await asyncio.wait_for(again, 10) is not None
    await feed.close()
    await inner.close()
