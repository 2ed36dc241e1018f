"""The two small pieces of asyncio that coordination needs.

- `KeyWatch`: wait for the next event on a few exact keys, from a known
  revision on. The store's watches match by string prefix, so events on other
  keys sharing the prefix are dropped here; one watch on a single key's name
  when one key is watched, one on the line's prefix otherwise.
- `finish`: run a clean-up to its end even when the caller is being cancelled,
  so a cancelled acquire never leaves its key in a line.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from crossway.store.errors import CompactedError
from crossway.store.protocol import Store, Watch
from crossway.store.types import Event, EventType

T = TypeVar("T")


class KeyWatch:
    """Follows a few exact keys of one line, from a given revision on.

    The watch is opened on first use and kept while the waiter watches the same
    keys, so a waiter that re-lists and finds its predecessor unchanged keeps
    its stream: on etcd a new watch that starts in the past is only served by
    the server's periodic catch-up, up to 100 ms later. It is reopened when the
    keys change — unless `whole_line`, for waiters whose keys change often
    (a semaphore's waiter moves from its predecessor to the holders): they
    follow the whole line with one stream and pick their keys out of it.
    Close it with `aclose()` (or `async with`).
    """

    def __init__(self, store: Store, prefix: str, *, whole_line: bool = False) -> None:
        self._store = store
        self._prefix = prefix
        self._whole_line = whole_line
        self._keys: frozenset[str] = frozenset()
        self._watch: Watch | None = None

    async def next_change(
        self, keys: frozenset[str], *, after: int, wait: float | None, deletes_only: bool
    ) -> int | None:
        """The revision of the first change to one of `keys` (all under the
        prefix) after revision `after` — only deletions with `deletes_only` —
        or None when `wait` seconds pass first (None: no limit).

        When the history after `after` has been compacted, returns `after`: the
        caller re-lists, which is all a change would have made it do. Store
        failures propagate; cancellation propagates and leaves the watch open
        for `aclose()`.
        """
        if not keys:
            raise ValueError("nothing to watch")
        try:
            async with asyncio.timeout(wait):
                watch = await self._follow(keys, after)
                while True:
                    batch = await watch.next_batch()
                    hits = [e.revision for e in batch if _counts(e, keys, after, deletes_only)]
                    if hits:
                        return max(hits)
        except TimeoutError:
            return None
        except CompactedError:
            await self.aclose()
            return after

    async def _follow(self, keys: frozenset[str], after: int) -> Watch:
        if self._watch is not None and (keys == self._keys or self._whole_line):
            return self._watch
        await self.aclose()
        single = len(keys) == 1 and not self._whole_line
        watched = next(iter(keys)) if single else self._prefix
        self._watch = self._store.watch(watched, after_revision=after)
        self._keys = keys
        return self._watch

    async def aclose(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            await watch.aclose()

    async def __aenter__(self) -> KeyWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _counts(event: Event, keys: frozenset[str], after: int, deletes_only: bool) -> bool:
    if event.revision <= after or event.kv.key not in keys:
        return False
    return not deletes_only or event.type is EventType.DELETE


async def finish(work: Awaitable[T]) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile.

    The caller's cancellation is delivered (re-raised) once `work` is done, so
    the caller still stops, but only after its clean-up has happened. An
    exception from `work` propagates as usual.
    """
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise  # the work itself was cancelled, or ended as we were
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result


async def quietly(work: Awaitable[object]) -> None:
    """`finish(work)`, ignoring failures: for best-effort clean-up on a path
    that is already failing."""
    with contextlib.suppress(Exception):
        await finish(work)
