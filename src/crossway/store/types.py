"""The values the store speaks in: key-values, events, compares, operations.

The model is etcd's v3 data model, so the etcd backend maps onto it one to one:

- the store has one global `revision`, raised by one for every write
  transaction that changes something (a transaction of many puts is one
  revision, as in etcd);
- each key carries `create_revision` (revision of its creation; 0 means it does
  not exist), `mod_revision` (of its last change) and `version` (changes since
  creation, reset to 1 when a deleted key is created again);
- a key may be bound to a lease (`lease` != 0) and is deleted when it expires.

Keys are `str` (UTF-8 on the wire), values are `bytes`.
"""

from __future__ import annotations

import enum
from typing import Literal

import msgspec

NO_LEASE = 0


class KeyValue(msgspec.Struct, frozen=True, gc=False):
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = NO_LEASE


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


class Event(msgspec.Struct, frozen=True, gc=False):
    """One change. For a DELETE, `kv.value` is empty and `kv.mod_revision` is the
    revision of the deletion; `prev` is the value it had, when known."""

    type: EventType
    kv: KeyValue
    prev: KeyValue | None = None

    @property
    def revision(self) -> int:
        return self.kv.mod_revision


class RangeResult(msgspec.Struct, frozen=True, gc=False):
    kvs: list[KeyValue]
    revision: int
    """The store revision the read was served at."""


CompareTarget = Literal["value", "version", "create", "mod", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]


class Compare(msgspec.Struct, frozen=True):
    """A condition on one key, evaluated atomically with a transaction.

    A missing key has version, create and mod revision 0, lease 0 and no value
    (every value compare on it is false).
    """

    key: str
    target: CompareTarget
    op: CompareOp
    value: int | bytes

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls(key, "create", "==", 0)

    @classmethod
    def exists(cls, key: str) -> Compare:
        return cls(key, "create", ">", 0)

    @classmethod
    def mod_revision_is(cls, key: str, revision: int) -> Compare:
        return cls(key, "mod", "==", revision)

    @classmethod
    def value_is(cls, key: str, value: bytes) -> Compare:
        return cls(key, "value", "==", value)


class Put(msgspec.Struct, frozen=True):
    key: str
    value: bytes
    lease: int = NO_LEASE


class Delete(msgspec.Struct, frozen=True):
    """Deletes `key`, or every key under it when `prefix` is true."""

    key: str
    prefix: bool = False


class Get(msgspec.Struct, frozen=True):
    key: str
    prefix: bool = False
    limit: int = 0


Op = Put | Delete | Get


class PutResult(msgspec.Struct, frozen=True):
    revision: int
    prev: KeyValue | None = None


class DeleteResult(msgspec.Struct, frozen=True):
    revision: int
    deleted: list[KeyValue]


class GetResult(msgspec.Struct, frozen=True):
    kvs: list[KeyValue]


OpResult = PutResult | DeleteResult | GetResult


class TxnResult(msgspec.Struct, frozen=True):
    succeeded: bool
    revision: int
    results: list[OpResult]


class Lease(msgspec.Struct, frozen=True):
    id: int
    ttl: float


class LeaseInfo(msgspec.Struct, frozen=True):
    id: int
    ttl: float
    remaining: float
    keys: list[str]


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix`,
    or None when there is none (the empty prefix covers everything)."""
    chars = list(prefix)
    while chars:
        last = ord(chars[-1])
        if last < 0x10FFFF:
            chars[-1] = chr(last + 1)
            return "".join(chars)
        chars.pop()
    return None
