"""Watches for the local (memory and sqlite) backends.

Theory of operation (etcd's synced / unsynced watcher groups)
- The driver calls `WatchHub.publish(events)` once per durable transaction, in
  revision order. `published` is the newest revision handed out.
- A watcher is *synced* while it is caught up: `publish` appends matching
  events straight into its buffer.
- A watcher is *unsynced* when it starts behind (`after_revision` older than
  `published`) or when its buffer overflows because its consumer is slow.
  `publish` skips it; its consumer catches up by reading history, in chunks,
  from `resume_after` onward, and becomes synced again when — checked with no
  await in between — `resume_after == published`. This bounds memory per
  watcher and never loses or reorders an event.
- History older than what the in-memory `EventLog` holds comes from the
  backend's `HistorySource` (the sqlite log table); older than the compacted
  revision it is gone and the watcher gets `CompactedError`.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from crossway.store.errors import CompactedError, StoreClosed
from crossway.store.types import Event

CATCH_UP_REVISIONS = 1_000
DEFAULT_WATCH_BUFFER = 10_000


class HistorySource(Protocol):
    def __call__(self, prefix: str, after: int, upto: int) -> Awaitable[list[Event]]: ...


class EventLog:
    """Recent events in revision order, for watchers that start slightly behind."""

    __slots__ = ("_events", "_limit", "_revisions", "_start")

    def __init__(self, limit: int | None = None) -> None:
        self._events: list[Event] = []
        self._revisions: list[int] = []
        self._start = 0
        self._limit = limit

    def append(self, events: list[Event]) -> None:
        for event in events:
            self._events.append(event)
            self._revisions.append(event.kv.mod_revision)
        if self._limit is not None and len(self._events) - self._start > self._limit:
            self._drop_before(len(self._events) - self._limit)

    def oldest_revision(self) -> int | None:
        """Revision of the oldest event kept, or None when empty."""
        return self._revisions[self._start] if self._start < len(self._revisions) else None

    def covers(self, after: int, published: int) -> bool:
        oldest = self.oldest_revision()
        if oldest is None:
            return after >= published
        return after >= oldest - 1

    def between(self, prefix: str, after: int, upto: int) -> list[Event]:
        lo = bisect.bisect_right(self._revisions, after, self._start)
        hi = bisect.bisect_right(self._revisions, upto, lo)
        return [e for e in self._events[lo:hi] if e.kv.key.startswith(prefix)]

    def forget_through(self, revision: int) -> None:
        self._drop_before(bisect.bisect_right(self._revisions, revision, self._start))

    def _drop_before(self, index: int) -> None:
        self._start = max(self._start, index)
        # Trim the lists only now and then, so dropping is amortised O(1).
        if self._start > 1024 and self._start * 2 > len(self._events):
            del self._events[: self._start]
            del self._revisions[: self._start]
            self._start = 0


class WatchHub:
    def __init__(
        self,
        *,
        published: int,
        compacted: int,
        log: EventLog,
        older: HistorySource | None = None,
        buffer_limit: int = DEFAULT_WATCH_BUFFER,
    ) -> None:
        self.published = published
        self.compacted = compacted
        self.log = log
        self._older = older
        self._buffer_limit = buffer_limit
        self._synced: dict[str, set[LocalWatch]] = {}
        self._closed = False

    def open(self, prefix: str, after_revision: int | None) -> LocalWatch:
        after = self.published if after_revision is None else after_revision
        watch = LocalWatch(self, prefix, after)
        if self._closed:
            watch.fail(StoreClosed())
        elif after < self.compacted:
            watch.fail(CompactedError(after, self.compacted))
        elif after >= self.published:
            watch.resume_after = self.published
            self._add_synced(watch)
        return watch

    def publish(self, events: list[Event]) -> None:
        if not events:
            return
        self.log.append(events)
        self.published = events[-1].kv.mod_revision
        for prefix, watchers in tuple(self._synced.items()):
            matching = [e for e in events if e.kv.key.startswith(prefix)] if prefix else events
            if not matching:
                for watch in watchers:
                    watch.resume_after = self.published
                continue
            for watch in tuple(watchers):
                if not watch.deliver(matching, self.published, self._buffer_limit):
                    self._remove_synced(watch)

    def compact(self, revision: int) -> None:
        self.compacted = max(self.compacted, revision)
        self.log.forget_through(revision)

    def close(self) -> None:
        self._closed = True
        for watchers in tuple(self._synced.values()):
            for watch in tuple(watchers):
                watch.fail(StoreClosed())
        self._synced.clear()

    def watcher_count(self) -> int:
        return sum(len(w) for w in self._synced.values())

    async def history(self, prefix: str, after: int) -> tuple[list[Event], int]:
        """Events under `prefix` in (after, upto] and `upto`, one chunk at a time."""
        if after < self.compacted:
            raise CompactedError(after, self.compacted)
        upto = min(self.published, after + CATCH_UP_REVISIONS)
        if self.log.covers(after, self.published):
            return self.log.between(prefix, after, upto), upto
        if self._older is None:
            raise CompactedError(after, self.compacted)
        events = await self._older(prefix, after, upto)
        if after < self.compacted:  # compacted while we were reading
            raise CompactedError(after, self.compacted)
        return events, upto

    def try_sync(self, watch: LocalWatch) -> bool:
        if self._closed:
            watch.fail(StoreClosed())
            return False
        if watch.resume_after >= self.published:
            self._add_synced(watch)
            return True
        return False

    def drop(self, watch: LocalWatch) -> None:
        self._remove_synced(watch)

    def _add_synced(self, watch: LocalWatch) -> None:
        watch.synced = True
        self._synced.setdefault(watch.prefix, set()).add(watch)

    def _remove_synced(self, watch: LocalWatch) -> None:
        watch.synced = False
        group = self._synced.get(watch.prefix)
        if group is not None:
            group.discard(watch)
            if not group:
                del self._synced[watch.prefix]


class LocalWatch:
    """One watcher. Iterate it for events; `aclose()` when done."""

    __slots__ = ("_buffer", "_error", "_hub", "_wakeup", "prefix", "resume_after", "synced")

    def __init__(self, hub: WatchHub, prefix: str, after: int) -> None:
        self._hub = hub
        self.prefix = prefix
        self.resume_after = after
        self.synced = False
        self._buffer: deque[Event] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    # Called by the hub, synchronously.

    def deliver(self, events: list[Event], published: int, limit: int) -> bool:
        """Buffer `events`; False when the consumer is too far behind and the
        watcher must catch up from history instead."""
        if len(self._buffer) >= limit:
            return False
        self._buffer.extend(events)
        self.resume_after = published
        self._wake()
        return True

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The consumer side.

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if not self._buffer:
            await self._fill()
        return self._buffer.popleft()

    async def next_batch(self) -> list[Event]:
        if not self._buffer:
            await self._fill()
        batch = list(self._buffer)
        self._buffer.clear()
        return batch

    async def _fill(self) -> None:
        while not self._buffer:
            if self._error is not None:
                raise self._error
            if self.synced:
                await self._wait()
                continue
            events, upto = await self._hub.history(self.prefix, self.resume_after)
            self._buffer.extend(events)
            self.resume_after = upto
            if not self._buffer and not self._hub.try_sync(self):
                await asyncio.sleep(0)
            elif not self.synced:
                self._hub.try_sync(self)

    async def _wait(self) -> None:
        self._wakeup = asyncio.get_running_loop().create_future()
        try:
            await self._wakeup
        finally:
            self._wakeup = None

    async def aclose(self) -> None:
        self._hub.drop(self)
        self.fail(StopAsyncIteration())

    async def __aenter__(self) -> LocalWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


CloseHook = Callable[[], None]
