"""`LocalStore`: the memory and sqlite backends, one code path for both.

Theory of operation
- State lives in memory: a `KeySpace` (current keys), a `LeaseTable` and a
  `WatchHub`. All of it is touched only from the event loop thread, so a
  transaction is atomic simply by not awaiting while it runs.
- Without a persister (the memory backend) a transaction is done once applied.
- With a persister (sqlite) writes use *group commit*: each transaction is
  applied in memory at once (so the next one sees it), queued, and its caller
  waits. One flusher task writes everything queued as one database transaction
  on the persister's thread, then answers every caller of the batch and
  publishes its events. Under load many transactions share one fsync.
- Reads never return what is not yet durable: a read that sees pending writes
  waits for their batch. If a batch cannot be written (disk full), it and every
  transaction queued after it (they were built on it) are rolled back in memory
  and their callers get `StoreUnavailable`; nothing acknowledged is lost.
- Lease expiry runs in rounds (`EXPIRY_GRANULARITY`): a lease is revoked at
  most 50 ms after its deadline, and a large table costs a few wake-ups a
  second, not one per lease.
- Lease renewals are memory only. Lease grants and revokes are records in the
  same batches, so a revoke and the deletion of its keys land together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Container, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from crossway.core.clock import Clock, SystemClock
from crossway.store.errors import CompareFailed, LeaseNotFound, StoreClosed, StoreUnavailable
from crossway.store.keyspace import Applied, KeySpace
from crossway.store.leases import LeaseTable
from crossway.store.persist import (
    Changes,
    Compacted,
    LeaseGranted,
    LeaseRevoked,
    LoadedState,
    Persister,
    Record,
)
from crossway.store.types import (
    NO_LEASE,
    Compare,
    Delete,
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    Lease,
    LeaseInfo,
    Op,
    Put,
    PutResult,
    RangeResult,
    TxnResult,
)
from crossway.store.watch import EventLog, LocalWatch, WatchHub

log = logging.getLogger("crossway.store")

T = TypeVar("T")

EXPIRY_RETRY_SECONDS = 1.0
COMPACT_EVERY_SECONDS = 60.0
MAX_LEASE_SLEEP = 0.5
EXPIRY_GRANULARITY = 0.05
"""Leases are expired in rounds at least this far apart: 100,000 leases have a
deadline every 0.3 ms, and waking for each would cost more than the expiry."""


@dataclass(slots=True)
class _Pending:
    """A write applied in memory and waiting for its batch to be durable."""

    records: list[Record]
    applied: Applied | None
    done: asyncio.Future[None]
    lease_undo: list[tuple[str, int]] = field(default_factory=list)
    granted: list[int] = field(default_factory=list)
    revoked: list[tuple[int, float, set[str]]] = field(default_factory=list)


class LocalStore:
    """The Store protocol over in-memory state, optionally made durable."""

    def __init__(
        self,
        *,
        name: str = "memory",
        clock: Clock | None = None,
        persister: Persister | None = None,
        state: LoadedState | None = None,
        memory_events: int | None = None,
        retain_revisions: int = 100_000,
    ) -> None:
        state = state or LoadedState()
        self.name = name
        self._clock = clock or SystemClock()
        self._persister = persister
        self._keyspace = KeySpace(state.kvs, state.revision)
        self._leases = LeaseTable()
        self._retain = retain_revisions
        self._executor: ThreadPoolExecutor | None = None
        older = None
        if persister is not None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"crossway-{name}")
            older = self._events_from_disk
        self._hub = WatchHub(
            published=state.revision,
            compacted=state.compacted,
            log=EventLog(memory_events),
            older=older,
        )
        self._durable = state.revision
        self._queue: list[_Pending] = []
        self._flushing: asyncio.Task[None] | None = None
        self._flushed = asyncio.Event()
        self._rollbacks = 0
        self._closed = False
        self._lease_wakeup = asyncio.Event()
        self._restore_leases(state)
        loop = asyncio.get_running_loop()
        self._expiry = loop.create_task(self._expire_forever())
        self._compactor = loop.create_task(self._compact_forever())

    def _restore_leases(self, state: LoadedState) -> None:
        # A lease restored after a restart gets its full TTL again (as etcd does
        # on a leader change): its holder could not renew while we were down.
        now = self._clock.now()
        for lease in state.leases:
            self._leases.grant(lease.id, lease.ttl, now)
        for kv in state.kvs:
            if kv.lease and kv.lease in self._leases:
                self._leases.attach(kv.key, kv.lease)

    # Reads

    async def get(self, key: str) -> KeyValue | None:
        while True:
            self._check_open()
            kv = self._keyspace.get(key)
            if await self._is_durable(self._keyspace.revision):
                return kv

    async def range(self, prefix: str, *, limit: int = 0) -> RangeResult:
        while True:
            self._check_open()
            revision = self._keyspace.revision
            kvs = self._keyspace.range(prefix, limit)
            if await self._is_durable(revision):
                return RangeResult(kvs, revision)

    async def revision(self) -> int:
        while True:
            self._check_open()
            revision = self._keyspace.revision
            if await self._is_durable(revision):
                return revision

    async def _is_durable(self, revision: int) -> bool:
        """Wait until `revision` is durable; False if it was rolled back."""
        rollbacks = self._rollbacks
        while self._durable < revision:
            if self._rollbacks != rollbacks:
                return False
            self._check_open()
            self._flushed.clear()
            await self._flushed.wait()
        return self._rollbacks == rollbacks

    # Writes

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        lease: int = NO_LEASE,
        if_mod_revision: int | None = None,
        if_absent: bool = False,
    ) -> PutResult:
        compares: list[Compare] = []
        if if_absent or if_mod_revision == 0:
            compares.append(Compare.absent(key))
        elif if_mod_revision is not None:
            compares.append(Compare.mod_revision_is(key, if_mod_revision))
        result = await self.txn(compares, [Put(key, value, lease)])
        if not result.succeeded:
            raise CompareFailed(key, await self.get(key))
        put = result.results[0]
        assert isinstance(put, PutResult)
        return put

    async def delete(self, key: str, *, if_mod_revision: int | None = None) -> DeleteResult:
        compares = (
            [] if if_mod_revision is None else [Compare.mod_revision_is(key, if_mod_revision)]
        )
        result = await self.txn(compares, [Delete(key)])
        if not result.succeeded:
            raise CompareFailed(key, await self.get(key))
        deleted = result.results[0]
        assert isinstance(deleted, DeleteResult)
        return deleted

    async def delete_prefix(self, prefix: str) -> DeleteResult:
        result = await self.txn([], [Delete(prefix, prefix=True)])
        deleted = result.results[0]
        assert isinstance(deleted, DeleteResult)
        return deleted

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        self._check_open()
        ok, _ = self._keyspace.holds(compares)
        self._check_leases(success if ok else failure)
        applied = self._keyspace.apply(compares, success, failure)
        result = TxnResult(applied.succeeded, applied.revision, applied.results)
        if applied.undo is None:
            # Nothing changed, but what the transaction read must be durable.
            if not await self._is_durable(applied.revision):
                raise StoreUnavailable("the state read by this transaction was rolled back")
            return result
        pending = self._pending([Changes(applied.revision, applied.events)], applied)
        self._track_leases(applied.events, pending)
        await self._commit(pending)
        return result

    def _check_leases(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self._leases:
                raise LeaseNotFound(op.lease)

    def _track_leases(self, events: list[Event], pending: _Pending) -> None:
        for event in events:
            key = event.kv.key
            prev = event.prev.lease if event.prev is not None else NO_LEASE
            pending.lease_undo.append((key, prev))
            if event.type is EventType.PUT and event.kv.lease:
                self._leases.attach(key, event.kv.lease)
            else:
                self._leases.detach(key)

    # Leases

    async def grant(self, ttl: float) -> Lease:
        self._check_open()
        if ttl <= 0:
            raise ValueError("a lease TTL must be positive")
        lease = self._leases.new_id()
        self._leases.grant(lease, ttl, self._clock.now())
        self._lease_wakeup.set()
        pending = self._pending([LeaseGranted(lease, ttl)], None)
        pending.granted.append(lease)
        await self._commit(pending)
        return Lease(lease, ttl)

    async def keepalive(self, lease: int) -> float:
        self._check_open()
        state = self._leases.renew(lease, self._clock.now())
        if state is None:
            raise LeaseNotFound(lease)
        return state.ttl

    async def keepalive_many(self, leases: Sequence[int]) -> dict[int, float]:
        """Renew each of `leases` (memory only, no await in between); returns the
        TTL of each one renewed. Leases that do not exist are left out."""
        self._check_open()
        now = self._clock.now()
        renew = self._leases.renew
        renewed: dict[int, float] = {}
        for lease in leases:
            state = renew(lease, now)
            if state is not None:
                renewed[lease] = state.ttl
        return renewed

    async def revoke(self, lease: int) -> None:
        self._check_open()
        await self._revoke(lease)

    async def lease_info(self, lease: int) -> LeaseInfo:
        self._check_open()
        state = self._leases.get(lease)
        if state is None:
            raise LeaseNotFound(lease)
        remaining = max(0.0, state.deadline - self._clock.now())
        return LeaseInfo(lease, state.ttl, remaining, sorted(state.keys))

    def lease_snapshot(self, leases: set[int]) -> list[tuple[int, float, float]]:
        """(id, ttl, remaining) of each of `leases` that exists, from memory."""
        now = self._clock.now()
        out = []
        for lease in leases:
            state = self._leases.get(lease)
            if state is not None:
                out.append((lease, state.ttl, max(0.0, state.deadline - now)))
        return out

    def expiring_leases(
        self, among: Container[int], *, within: float, fraction: float = 1.0
    ) -> list[tuple[int, float, float]]:
        """(id, ttl, remaining) of each lease in `among` that has less than
        min(ttl * fraction, within) left, from memory; cheap enough to call
        every second with hundreds of thousands of leases."""
        now = self._clock.now()
        found = self._leases.expiring(now, within=within, fraction=fraction, among=among)
        return [(s.id, s.ttl, max(0.0, s.deadline - now)) for s in found]

    def lease_count(self) -> int:
        return len(self._leases)

    async def _revoke(self, lease: int) -> None:
        state = self._leases.get(lease)
        if state is None:
            return
        keys = sorted(state.keys)
        applied = self._keyspace.apply([], [Delete(k) for k in keys])
        records: list[Record] = []
        if applied.undo is not None:
            records.append(Changes(applied.revision, applied.events))
        records.append(LeaseRevoked(lease))
        pending = self._pending(records, applied if applied.undo else None)
        if applied.undo is not None:
            self._track_leases(applied.events, pending)
        self._leases.remove(lease)
        pending.revoked.append((lease, state.ttl, set(keys)))
        await self._commit(pending)

    async def expire_leases(self) -> int:
        """Revoke every lease whose deadline has passed; returns how many.

        The background task calls this; tests on a virtual clock call it
        after advancing time."""
        expired = self._leases.expired(self._clock.now())
        for lease in expired:
            try:
                await self._revoke(lease)
            except StoreUnavailable as exc:
                log.warning("lease %x could not be revoked yet: %s", lease, exc)
                self._leases.postpone(lease, self._clock.now() + EXPIRY_RETRY_SECONDS)
        return len(expired)

    async def _expire_forever(self) -> None:
        while not self._closed:
            deadline = self._leases.next_deadline()
            delay = MAX_LEASE_SLEEP if deadline is None else deadline - self._clock.now()
            if delay > 0:
                self._lease_wakeup.clear()
                sleep = min(max(delay, EXPIRY_GRANULARITY), MAX_LEASE_SLEEP)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lease_wakeup.wait(), sleep)
                continue
            try:
                await self.expire_leases()
            except StoreClosed:
                return
            except Exception:
                log.exception("lease expiry failed")
                await asyncio.sleep(EXPIRY_RETRY_SECONDS)

    # Watches and compaction

    def watch(self, prefix: str, *, after_revision: int | None = None) -> LocalWatch:
        return self._hub.open(prefix, after_revision)

    async def compact(self, revision: int) -> None:
        self._check_open()
        if revision > self._durable:
            raise ValueError(f"cannot compact revision {revision}: the store is at {self._durable}")
        if revision <= self._hub.compacted:
            return
        self._hub.compact(revision)
        await self._commit(self._pending([Compacted(revision)], None))

    async def compacted_revision(self) -> int:
        return self._hub.compacted

    async def auto_compact(self) -> None:
        """Keep about `retain_revisions` of history (called periodically)."""
        target = self._durable - self._retain
        if target > self._hub.compacted + self._retain // 10:
            await self.compact(target)

    async def _compact_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(COMPACT_EVERY_SECONDS)
            try:
                await self.auto_compact()
            except StoreClosed:
                return
            except Exception as exc:
                log.warning("automatic compaction failed: %s", exc)

    def watcher_count(self) -> int:
        return self._hub.watcher_count()

    def key_count(self) -> int:
        return len(self._keyspace)

    # Group commit

    def _pending(self, records: list[Record], applied: Applied | None) -> _Pending:
        done = asyncio.get_running_loop().create_future()
        return _Pending(records, applied, done)

    async def _commit(self, pending: _Pending) -> None:
        if self._persister is None:
            self._publish(pending)
            return
        self._queue.append(pending)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())
        # A cancelled caller does not cancel the write: it is already visible
        # to the transactions queued behind it.
        await asyncio.shield(pending.done)

    def _publish(self, pending: _Pending) -> None:
        for record in pending.records:
            if isinstance(record, Changes):
                self._durable = record.revision
                self._hub.publish(record.events)
        if not pending.done.done():
            pending.done.set_result(None)

    async def _flush(self) -> None:
        assert self._persister is not None
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            records = [r for p in batch for r in p.records]
            try:
                await loop.run_in_executor(self._executor, self._persister.write, records)
            except Exception as exc:
                self._roll_back(batch + self._queue, exc)
                self._queue = []
            else:
                for pending in batch:
                    self._publish(pending)
            self._flushed.set()

    def _roll_back(self, failed: list[_Pending], exc: Exception) -> None:
        log.error("store write failed, %d transaction(s) rolled back: %s", len(failed), exc)
        self._rollbacks += 1
        error = StoreUnavailable(f"the store could not write: {exc}")
        for pending in reversed(failed):
            if pending.applied is not None and pending.applied.undo is not None:
                self._keyspace.rollback(pending.applied.undo)
            for key, lease in reversed(pending.lease_undo):
                if lease and lease in self._leases:
                    self._leases.attach(key, lease)
                else:
                    self._leases.detach(key)
            for lease in pending.granted:
                self._leases.remove(lease)
            for lease, ttl, keys in pending.revoked:
                self._leases.grant(lease, ttl, self._clock.now())
                for key in keys:
                    self._leases.attach(key, lease)
            if not pending.done.done():
                pending.done.set_exception(error)

    async def _events_from_disk(self, prefix: str, after: int, upto: int) -> list[Event]:
        assert self._persister is not None
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._persister.events_between, prefix, after, upto
        )

    # Lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()

    async def close(self) -> None:
        if self._closed:
            return
        if self._flushing is not None:
            with contextlib.suppress(Exception):
                await self._flushing
        self._closed = True
        self._flushed.set()
        for task in (self._expiry, self._compactor):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._hub.close()
        if self._persister is not None and self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._persister.close)
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> LocalStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
