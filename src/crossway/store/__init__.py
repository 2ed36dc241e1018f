"""The revisioned key-value store with leases and watches at the centre of
Crossway (the etcd data model), and its backends: memory, sqlite and etcd."""

from __future__ import annotations

from crossway.store.errors import (
    CompactedError,
    CompareFailed,
    LeaseNotFound,
    StoreClosed,
    StoreUnavailable,
)
from crossway.store.open import open_store
from crossway.store.protocol import Store, Watch
from crossway.store.types import (
    NO_LEASE,
    Compare,
    Delete,
    DeleteResult,
    Event,
    EventType,
    Get,
    GetResult,
    KeyValue,
    Lease,
    LeaseInfo,
    Op,
    Put,
    PutResult,
    RangeResult,
    TxnResult,
)

__all__ = [
    "NO_LEASE",
    "CompactedError",
    "Compare",
    "CompareFailed",
    "Delete",
    "DeleteResult",
    "Event",
    "EventType",
    "Get",
    "GetResult",
    "KeyValue",
    "Lease",
    "LeaseInfo",
    "LeaseNotFound",
    "Op",
    "Put",
    "PutResult",
    "RangeResult",
    "Store",
    "StoreClosed",
    "StoreUnavailable",
    "TxnResult",
    "Watch",
    "open_store",
]
