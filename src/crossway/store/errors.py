"""Errors raised by every store backend alike."""

from __future__ import annotations

from crossway.core.errors import Conflict, CrosswayError, NotFound, PreconditionFailed, Unavailable
from crossway.store.types import KeyValue


class CompareFailed(PreconditionFailed):
    """A compare-and-set lost: the key is not in the state the caller expected."""

    code = "compare_failed"

    def __init__(self, key: str, current: KeyValue | None) -> None:
        what = "does not exist" if current is None else f"is at mod_revision {current.mod_revision}"
        super().__init__(f"compare failed on {key!r}: the key {what}")
        self.key = key
        self.current = current


class CompactedError(CrosswayError):
    """The revision a watcher asked for is older than the compacted history.

    The watcher must re-list (read the current state, which carries a revision)
    and watch again from there; events in between are gone for good.
    """

    code = "compacted"
    status = 410

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(
            f"revision {requested} has been compacted (history starts after {compacted}); "
            "re-list and watch from the revision of the new list",
            compacted_revision=compacted,
        )
        self.requested = requested
        self.compacted_revision = compacted


class LeaseNotFound(NotFound):
    code = "lease_not_found"

    def __init__(self, lease: int) -> None:
        super().__init__(f"lease {lease:x} does not exist or has expired")
        self.lease = lease


class StoreClosed(Unavailable):
    code = "store_closed"

    def __init__(self) -> None:
        super().__init__("the store is closed")


class StoreUnavailable(Unavailable):
    """The backend cannot take the request now (disk full, etcd down).

    The local backends apply nothing when they raise it. A write to etcd whose
    connection broke mid-request may have been applied, exactly as with any
    network call: re-read (or use compare-and-set) before retrying."""

    code = "store_unavailable"


__all__ = [
    "CompactedError",
    "CompareFailed",
    "Conflict",
    "LeaseNotFound",
    "StoreClosed",
    "StoreUnavailable",
]
