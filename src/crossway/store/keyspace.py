"""The in-memory key space behind the memory and sqlite backends.

A pure object: transactions in, events out. No I/O, no clock, no asyncio.

Theory of operation
- `_kvs` holds the current value of every live key, sorted by key so a prefix
  range is a slice, not a scan.
- `apply(compares, success, failure)` evaluates the compares against the
  current state, applies one branch, and — when it changed something — assigns
  the next revision and returns the events it produced, plus an `Undo` record
  that restores the previous state exactly.

Invariants
1. `revision` grows by exactly one per transaction that produced events.
2. Every event of a transaction carries that transaction's revision.
3. A deleted key leaves no trace in `_kvs`; re-creating it starts at version 1.
4. `rollback(undo)` is only ever called for the newest not-yet-rolled-back
   transaction (the driver undoes in reverse order), so restoring the previous
   kvs and revision is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sortedcontainers import SortedDict

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
    Op,
    OpResult,
    Put,
    PutResult,
    prefix_end,
)


@dataclass(slots=True)
class Undo:
    """What a transaction changed, so it can be taken back."""

    revision_before: int
    previous: list[tuple[str, KeyValue | None]] = field(default_factory=list)


@dataclass(slots=True)
class Applied:
    succeeded: bool
    revision: int
    results: list[OpResult]
    events: list[Event]
    undo: Undo | None
    """None when nothing changed (no new revision)."""


class KeySpace:
    __slots__ = ("_kvs", "revision")

    def __init__(self, kvs: Iterable[KeyValue] = (), revision: int = 0) -> None:
        self._kvs: SortedDict = SortedDict({kv.key: kv for kv in kvs})
        self.revision = revision

    def __len__(self) -> int:
        return len(self._kvs)

    def get(self, key: str) -> KeyValue | None:
        kv: KeyValue | None = self._kvs.get(key)
        return kv

    def range(self, prefix: str, limit: int = 0) -> list[KeyValue]:
        end = prefix_end(prefix)
        keys = self._kvs.irange(prefix, end, inclusive=(True, False))
        out: list[KeyValue] = []
        kvs = self._kvs
        for key in keys:
            out.append(kvs[key])
            if limit and len(out) >= limit:
                break
        return out

    def items(self) -> list[KeyValue]:
        return list(self._kvs.values())

    def holds(self, compares: Sequence[Compare]) -> tuple[bool, Compare | None]:
        for compare in compares:
            if not _holds(compare, self._kvs.get(compare.key)):
                return False, compare
        return True, None

    def apply(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> Applied:
        ok, _ = self.holds(compares)
        ops = success if ok else failure
        undo = Undo(self.revision)
        revision = self.revision + 1
        events: list[Event] = []
        results: list[OpResult] = []
        for op in ops:
            results.append(self._apply_op(op, revision, events, undo))
        if not events:
            return Applied(ok, self.revision, _fix_revisions(results, self.revision), [], None)
        self.revision = revision
        return Applied(ok, revision, results, events, undo)

    def rollback(self, undo: Undo) -> None:
        for key, previous in reversed(undo.previous):
            if previous is None:
                self._kvs.pop(key, None)
            else:
                self._kvs[key] = previous
        self.revision = undo.revision_before

    def _apply_op(self, op: Op, revision: int, events: list[Event], undo: Undo) -> OpResult:
        if isinstance(op, Put):
            return self._put(op, revision, events, undo)
        if isinstance(op, Delete):
            return self._delete(op, revision, events, undo)
        if isinstance(op, Get):
            kvs = self.range(op.key, op.limit) if op.prefix else _one(self._kvs.get(op.key))
            return GetResult(kvs)
        raise TypeError(f"not a store operation: {op!r}")

    def _put(self, op: Put, revision: int, events: list[Event], undo: Undo) -> PutResult:
        prev: KeyValue | None = self._kvs.get(op.key)
        if prev is None:
            kv = KeyValue(op.key, op.value, revision, revision, 1, op.lease)
        else:
            kv = KeyValue(
                op.key, op.value, prev.create_revision, revision, prev.version + 1, op.lease
            )
        undo.previous.append((op.key, prev))
        self._kvs[op.key] = kv
        events.append(Event(EventType.PUT, kv, prev))
        return PutResult(revision, prev)

    def _delete(self, op: Delete, revision: int, events: list[Event], undo: Undo) -> DeleteResult:
        if op.prefix:
            victims = self.range(op.key)
        else:
            one: KeyValue | None = self._kvs.get(op.key)
            victims = _one(one)
        for prev in victims:
            del self._kvs[prev.key]
            undo.previous.append((prev.key, prev))
            tombstone = KeyValue(prev.key, b"", 0, revision, 0, NO_LEASE)
            events.append(Event(EventType.DELETE, tombstone, prev))
        return DeleteResult(revision if victims else self.revision, victims)


def _one(kv: KeyValue | None) -> list[KeyValue]:
    return [] if kv is None else [kv]


def _fix_revisions(results: list[OpResult], revision: int) -> list[OpResult]:
    # A transaction that changed nothing did not take a new revision; its
    # results must not claim one.
    return [
        DeleteResult(revision, r.deleted) if isinstance(r, DeleteResult) else r for r in results
    ]


_ABSENT = KeyValue("", b"", 0, 0, 0, NO_LEASE)


def _holds(compare: Compare, kv: KeyValue | None) -> bool:
    target = compare.target
    if target == "value":
        if kv is None or not isinstance(compare.value, bytes):
            return False
        return _compare(kv.value, compare.op, compare.value)
    current = kv or _ABSENT
    actual: int
    if target == "version":
        actual = current.version
    elif target == "create":
        actual = current.create_revision
    elif target == "mod":
        actual = current.mod_revision
    elif target == "lease":
        actual = current.lease
    else:
        raise ValueError(f"unknown compare target {target!r}")
    if not isinstance(compare.value, int):
        return False
    return _compare(actual, compare.op, compare.value)


def _compare(actual: int | bytes, op: str, expected: int | bytes) -> bool:
    if op == "==":
        return actual == expected
    if op == "!=":
        return actual != expected
    if op == "<":
        return actual < expected  # type: ignore[operator]
    if op == ">":
        return actual > expected  # type: ignore[operator]
    raise ValueError(f"unknown compare operator {op!r}")
