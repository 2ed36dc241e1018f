"""Wakes long polls when an entry changes: one store watch serves them all.

A thousand clients long-polling one key must not mean a thousand store
watches (on etcd, each would be a stream). `ConfigFeed` follows every entry
under `/config/` through one watch and resolves the futures of the requests
waiting on a key, handing each the changed key-value, so a wake-up costs no
store read and no decoding per client.

Theory of operation
- A long poll first reads the entry from the store, then subscribes with the
  index it has (`after`). The feed remembers the newest key-value it has seen
  for each key; if that is already past `after`, the subscription resolves at
  once, so a change the feed delivered between the read and the subscribe is
  never lost. Anything later arrives through the watch.
- A subscription resolves with None when the feed lost track (the watch's
  history was compacted while it was behind): the waiter must read the store
  again. On any other watch failure the feed resumes from the last revision
  it delivered, so waiters miss nothing; they may only wait a little longer.

Invariants
1. `revision` only grows; every event up to it has been delivered.
2. A future is resolved at most once and removed from the waiters when it is
   (or when its waiter unsubscribes), so waiters never accumulate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from crossway.config.model import ENTRY_PREFIX
from crossway.store import CompactedError, Event, KeyValue, Store

log = logging.getLogger("crossway.config")

Waiter = asyncio.Future[KeyValue | None]


class ConfigFeed:
    def __init__(self, store: Store, *, retry_delay: float = 0.5) -> None:
        self._store = store
        self._retry_delay = retry_delay
        self._waiters: dict[str, dict[Waiter, int]] = {}
        self._seen: dict[str, KeyValue] = {}
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Lock | None = None
        self._resync = False
        self.revision = 0

    async def start(self) -> None:
        """Begin following the store; idempotent and safe to call concurrently.
        A store failure here propagates and the next call tries again."""
        if self._task is not None:
            return
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._task is None:
                self.revision = await self._store.revision()
                self._task = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        """Stop following; every waiter is woken with None."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wake_all()

    def subscribe(self, key: str, after: int) -> Waiter:
        """A future resolved with the first key-value of `key` past revision
        `after` (None: read the store again). Unsubscribe when giving up."""
        future: Waiter = asyncio.get_running_loop().create_future()
        seen = self._seen.get(key)
        if seen is not None and seen.mod_revision > after:
            future.set_result(seen)
            return future
        self._waiters.setdefault(key, {})[future] = after
        return future

    def latest(self, key: str) -> KeyValue | None:
        """The newest key-value of `key` the feed has delivered (None when it
        has seen no change of the key since it started or last lost track)."""
        return self._seen.get(key)

    def unsubscribe(self, key: str, future: Waiter) -> None:
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.pop(future, None)
            if not waiters:
                del self._waiters[key]

    async def wait_change(
        self, key: str, after: int, *, deadline: float, abort: asyncio.Future[Any] | None = None
    ) -> KeyValue | None:
        """The first key-value of `key` past revision `after`, or None when the
        loop time reaches `deadline`, `abort` finishes, the feed is released or
        lost track (in every None case: read the store again if still
        interested). Cancellation unsubscribes and propagates."""
        loop = asyncio.get_running_loop()
        future = self.subscribe(key, after)
        if future.done():
            return future.result()
        # A timer and a done-callback instead of asyncio.wait: a wake-up of a
        # thousand waiters then costs one future each, nothing more.
        timer = loop.call_at(deadline, _settle, future)
        settle = functools.partial(_settle_from, future)
        if abort is not None:
            abort.add_done_callback(settle)
        try:
            return await future
        finally:
            timer.cancel()
            if abort is not None:
                abort.remove_done_callback(settle)
            self.unsubscribe(key, future)

    def release_all(self) -> None:
        """Wake every waiter with None (the server is shutting down)."""
        self._wake_all()

    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    async def _follow(self) -> None:
        while True:
            try:
                await self._follow_once()
            except CompactedError:
                log.warning("config feed fell behind compaction; waiters will re-read")
                self._resync = True
            except Exception:
                log.exception("config feed watch failed; resuming")
                await asyncio.sleep(self._retry_delay)

    async def _follow_once(self) -> None:
        if self._resync:
            self.revision = await self._store.revision()
            self._seen.clear()
            self._resync = False
            self._wake_all()
        async with self._store.watch(ENTRY_PREFIX, after_revision=self.revision) as watch:
            while True:
                self._deliver(await watch.next_batch())

    def _deliver(self, events: list[Event]) -> None:
        for event in events:
            kv = event.kv
            self._seen[kv.key] = kv
            self.revision = max(self.revision, kv.mod_revision)
            waiters = self._waiters.get(kv.key)
            if waiters:
                self._wake(kv.key, waiters, kv)

    def _wake(self, key: str, waiters: dict[Waiter, int], kv: KeyValue) -> None:
        for future, after in list(waiters.items()):
            if kv.mod_revision > after:
                del waiters[future]
                if not future.done():
                    future.set_result(kv)
        if not waiters:
            del self._waiters[key]

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for group in waiters.values():
            for future in group:
                _settle(future)


def _settle(future: Waiter) -> None:
    if not future.done():
        future.set_result(None)


def _settle_from(future: Waiter, _: asyncio.Future[Any]) -> None:
    _settle(future)
