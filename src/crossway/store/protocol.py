"""The `Store` protocol: a revisioned key-value store with leases and watches.

Every backend (memory, sqlite, etcd) implements exactly this, and the shared
conformance suite in tests/store/ holds each of them to it.

Guarantees every backend gives:

1. Every write transaction that changes something gets the next revision; the
   revision never goes back, and a transaction is all-or-nothing.
2. A call that returns has been applied durably (as durable as the backend is:
   the memory backend forgets on exit; sqlite and etcd do not).
3. `watch(prefix, after_revision=R)` yields every event with revision > R on a
   key under `prefix`, each exactly once, in revision order (events of one
   transaction in the order of its operations). If R is older than the
   compacted history the first `__anext__` raises `CompactedError`.
4. A key bound to a lease is deleted, with a DELETE event, when the lease
   expires or is revoked; all keys of one lease go in one revision.

On cancellation: a cancelled write may or may not have been applied (exactly
as with a network request); a cancelled read or watch changes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from crossway.store.types import (
    NO_LEASE,
    Compare,
    DeleteResult,
    Event,
    KeyValue,
    Lease,
    LeaseInfo,
    Op,
    PutResult,
    RangeResult,
    TxnResult,
)


@runtime_checkable
class Watch(Protocol):
    """An open watch: an async iterator of events, closed with `aclose()`.

    `async with store.watch(...) as w: async for event in w: ...`
    """

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def __anext__(self) -> Event: ...

    async def next_batch(self) -> list[Event]:
        """Every event ready now (at least one), waiting if there is none."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Watch: ...

    async def __aexit__(self, *exc: object) -> None: ...


@runtime_checkable
class Store(Protocol):
    name: str
    """The backend's name: "memory", "sqlite" or "etcd"."""

    async def get(self, key: str) -> KeyValue | None: ...

    async def range(self, prefix: str, *, limit: int = 0) -> RangeResult:
        """Every key starting with `prefix`, sorted by key (at most `limit` if > 0)."""
        ...

    async def revision(self) -> int:
        """The current revision of the store."""
        ...

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        lease: int = NO_LEASE,
        if_mod_revision: int | None = None,
        if_absent: bool = False,
    ) -> PutResult:
        """Write `key`. `if_mod_revision=N` makes it a compare-and-set (0 means
        "must not exist", like `if_absent`). Raises `CompareFailed` when the
        condition does not hold, `LeaseNotFound` for an unknown lease."""
        ...

    async def delete(self, key: str, *, if_mod_revision: int | None = None) -> DeleteResult: ...

    async def delete_prefix(self, prefix: str) -> DeleteResult: ...

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """If every compare holds, apply `success`, else `failure`; atomically."""
        ...

    async def grant(self, ttl: float) -> Lease: ...

    async def keepalive(self, lease: int) -> float:
        """Renew `lease` to its full TTL and return that TTL. Raises
        `LeaseNotFound` when it has expired or never existed."""
        ...

    async def revoke(self, lease: int) -> None:
        """Delete the lease and every key bound to it (no error if unknown)."""
        ...

    async def lease_info(self, lease: int) -> LeaseInfo: ...

    def watch(self, prefix: str, *, after_revision: int | None = None) -> Watch:
        """Follow changes under `prefix` after `after_revision` (default: now)."""
        ...

    async def compact(self, revision: int) -> None:
        """Forget history at and before `revision`."""
        ...

    async def compacted_revision(self) -> int: ...

    async def close(self) -> None: ...
