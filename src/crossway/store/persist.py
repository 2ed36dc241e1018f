"""What a durable local backend must provide to `LocalStore`.

The store applies every transaction in memory first, then hands batches of
records to the persister, which writes each batch atomically (one database
transaction) on its own thread. A caller is answered, and watchers hear of a
change, only after the batch holding it is durable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from crossway.store.types import Event, KeyValue


@dataclass(slots=True, frozen=True)
class Changes:
    revision: int
    events: list[Event]


@dataclass(slots=True, frozen=True)
class LeaseGranted:
    id: int
    ttl: float


@dataclass(slots=True, frozen=True)
class LeaseRevoked:
    id: int


@dataclass(slots=True, frozen=True)
class Compacted:
    revision: int


Record = Changes | LeaseGranted | LeaseRevoked | Compacted


@dataclass(slots=True)
class LoadedState:
    revision: int = 0
    compacted: int = 0
    kvs: list[KeyValue] = field(default_factory=list)
    leases: list[LeaseGranted] = field(default_factory=list)


class Persister(Protocol):
    """Blocking I/O; `LocalStore` calls every method from one worker thread."""

    def load(self) -> LoadedState: ...

    def write(self, records: list[Record]) -> None:
        """Write all `records` atomically and durably, or raise and write none."""
        ...

    def events_between(self, prefix: str, after: int, upto: int) -> list[Event]:
        """Logged events under `prefix` with after < revision <= upto."""
        ...

    def close(self) -> None: ...
