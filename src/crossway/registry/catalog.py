"""The catalog: every registered instance, decoded, following the store.

One watch on `/services/` keeps an in-memory view that discovery queries read
without touching the store or decoding JSON per request, so one control plane
answers tens of thousands of queries a second. Each service remembers the
revision of its last change, so a blocking query on one service wakes only
when that service changes (Consul's per-result index), not on every write.
`leases` counts the instances bound to each lease, kept up to date change by
change, so the self-preservation guard never has to walk every instance.

Answers are remembered per service (`memo`): a discovery query of a service
that has not changed since the last one is served from the bytes encoded
then, not re-sorted and re-encoded. Waiters wait on their own service
(`wait_change(..., service=…)`), so a change wakes the blocking queries of that
service only, not every long poll on the control plane.

Invariants
1. `revision` is the store revision the view reflects; it only grows.
2. After a `CompactedError` (the watch fell too far behind) the view is
   rebuilt from a fresh list, and every waiter is woken to re-read.
3. `leases[id]` is the number of instances in the view bound to lease `id`;
   a lease with no instance has no entry.
4. A service's memo is emptied by every change to the service and by a
   re-list, so it never holds an answer older than the service.
5. The instances of the view are shared, read-only values (copy one with
   `msgspec.structs.replace` to change it): instances with equal tags share
   one tags list. Instances are invisible to the cyclic garbage collector and
   a list is not, so sharing keeps 100,000 instances from adding 100,000
   objects to every full collection (a pause of hundreds of milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from crossway.registry.model import SERVICES_PREFIX, Instance, decode, parse_instance_key
from crossway.store import CompactedError, Event, EventType, Store

log = logging.getLogger("crossway.registry")

T = TypeVar("T")


@dataclass(slots=True)
class ServiceEntry:
    instances: dict[str, Instance] = field(default_factory=dict)
    modified: int = 0
    memo: dict[Hashable, Any] = field(default_factory=dict)


Listener = Callable[[str, str, Instance | None, Instance | None], None]
"""(service, id, old, new) — called for every instance change."""


class Catalog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self.services: dict[str, ServiceEntry] = {}
        self.leases: dict[int, int] = {}
        self._tag_lists: dict[tuple[str, ...], list[str]] = {}
        self.revision = 0
        self.modified = 0
        self._changed = asyncio.Event()
        # Blocked queries: one bare future each, settled by a change (of their
        # service, or of anything), their deadline, or `release_all`. A
        # thousand of them woken by one change cost a future each, not the
        # tasks and timeouts of asyncio.wait_for.
        self._waiters: set[asyncio.Future[None]] = set()
        self._service_waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._released = False
        self._touched: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []
        self._ready = asyncio.Event()

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        await self._relist()
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        self.release_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _relist(self) -> None:
        listing = await self._store.range(SERVICES_PREFIX)
        old = self.services
        self.services = {}
        self.leases = {}
        self._tag_lists = {}
        for kv in listing.kvs:
            self._apply_put(kv.key, kv.value, kv.mod_revision)
        for name, entry in old.items():
            for instance_id, instance in entry.instances.items():
                if instance_id not in self.services.get(name, ServiceEntry()).instances:
                    self._notify(name, instance_id, instance, None)
        self.revision = listing.revision
        self.modified = listing.revision
        for entry in self.services.values():
            entry.modified = max(entry.modified, 1)
        self._touched.update(old, self.services)
        self._ready.set()
        self._wake()

    async def _follow(self) -> None:
        while True:
            try:
                async with self._store.watch(SERVICES_PREFIX, after_revision=self.revision) as w:
                    while True:
                        self.apply(await w.next_batch())
            except CompactedError:
                log.warning("registry watch was compacted; re-listing the catalog")
                await self._relist()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("registry watch failed (%s); retrying", exc)
                await asyncio.sleep(1.0)

    def apply(self, events: list[Event]) -> None:
        for event in events:
            revision = event.kv.mod_revision
            if event.type is EventType.PUT:
                self._apply_put(event.kv.key, event.kv.value, revision)
            else:
                self._apply_delete(event.kv.key, revision)
            self.revision = max(self.revision, revision)
        self._wake()

    def _apply_put(self, key: str, raw: bytes, revision: int) -> None:
        parsed = parse_instance_key(key)
        if parsed is None:
            return
        service, instance_id = parsed
        try:
            instance = decode(raw)
        except msgspec.DecodeError:
            log.warning("ignoring undecodable instance at %s", key)
            return
        instance.tags = self._shared_tags(instance.tags)
        entry = self.services.setdefault(service, ServiceEntry())
        old = entry.instances.get(instance_id)
        entry.instances[instance_id] = instance
        entry.memo.clear()
        self._touched.add(service)
        self._count_lease(old, -1)
        self._count_lease(instance, 1)
        entry.modified = revision
        self.modified = revision
        self._notify(service, instance_id, old, instance)

    def _apply_delete(self, key: str, revision: int) -> None:
        parsed = parse_instance_key(key)
        if parsed is None:
            return
        service, instance_id = parsed
        entry = self.services.get(service)
        if entry is None:
            return
        old = entry.instances.pop(instance_id, None)
        entry.memo.clear()
        self._touched.add(service)
        self._count_lease(old, -1)
        entry.modified = revision
        self.modified = revision
        if not entry.instances:
            # Keep the entry so a blocking query sees the service change to empty.
            pass
        self._notify(service, instance_id, old, None)

    def _shared_tags(self, tags: list[str]) -> list[str]:
        """The one list of these tags every instance of the view shares (5)."""
        key = tuple(tags)
        shared = self._tag_lists.get(key)
        if shared is None:
            shared = self._tag_lists[key] = tags
        return shared

    def _count_lease(self, instance: Instance | None, delta: int) -> None:
        if instance is None or not instance.lease:
            return
        lease = int(instance.lease, 16)
        count = self.leases.get(lease, 0) + delta
        if count > 0:
            self.leases[lease] = count
        else:
            self.leases.pop(lease, None)

    def _notify(
        self, service: str, instance_id: str, old: Instance | None, new: Instance | None
    ) -> None:
        for listener in self._listeners:
            try:
                listener(service, instance_id, old, new)
            except Exception:
                log.exception("catalog listener failed")

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        waiters, self._waiters = self._waiters, set()
        for future in waiters:
            _settle(future)
        for service in self._touched:
            for future in self._service_waiters.pop(service, ()):
                _settle(future)
        self._touched.clear()

    def release_all(self) -> None:
        """Answer every blocked query now, and every later one at once (the
        server is shutting down: nobody should wait out their `wait`)."""
        self._released = True
        waiters, self._waiters = self._waiters, set()
        for future in waiters:
            _settle(future)
        for futures in self._service_waiters.values():
            for future in futures:
                _settle(future)
        self._service_waiters.clear()

    def memo(self, service: str, key: Hashable, build: Callable[[], T]) -> T:
        """`build()`, remembered under `key` until `service` next changes.

        Not remembered for a service the catalog does not know (nothing would
        ever forget it). `build` must depend on nothing but the service's
        instances and `key`."""
        entry = self.services.get(service)
        if entry is None:
            return build()
        try:
            found: T = entry.memo[key]
        except KeyError:
            found = entry.memo[key] = build()
        return found

    def service_index(self, service: str) -> int:
        entry = self.services.get(service)
        return entry.modified if entry is not None else 0

    async def caught_up(self, revision: int, timeout: float = 5.0) -> None:
        """Wait until the view reflects `revision` (read-your-writes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.revision < revision:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_change(
        self,
        index_of: Callable[[], int],
        after: int,
        timeout: float,
        *,
        service: str | None = None,
    ) -> None:
        """Block until `index_of()` passes `after` or `timeout` elapses.

        With `service`, only a change to that service (or a re-list) wakes the
        wait to look at `index_of()` again; `index_of` must then depend on that
        service alone. Cancellation propagates and leaves nothing behind."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while index_of() <= after and not self._released:
            if loop.time() >= deadline:
                return
            future: asyncio.Future[None] = loop.create_future()
            if service is None:
                waiters = self._waiters
            else:
                waiters = self._service_waiters.setdefault(service, set())
            waiters.add(future)
            timer = loop.call_at(deadline, _settle, future)
            try:
                await future
            finally:
                timer.cancel()
                waiters.discard(future)  # a deadline or a cancellation: no stale entry


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
