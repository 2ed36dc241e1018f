"""Distributed locks with fencing tokens, and counting semaphores.

A lock is a line of limit 1 (see `queue`): the session whose key is oldest
holds it, and its fence — that key's create_revision — strictly increases from
one holder to the next. Give the fence to every storage service the protected
work writes to, and have it refuse a fence lower than the highest it has seen
(docs/coordination.md): a holder that was paused past its session's TTL then
cannot overwrite the work of the holder after it.

A semaphore of limit K is a line whose first K contenders hold. K is agreed by
everyone in line: asking with another K while anybody holds or waits is a
`LimitMismatch` (409); once the line is empty a new K may be chosen.

`acquire` waits up to `wait` seconds (0: try once) and raises `Busy` (409,
naming the holder) when the wait runs out; the place is then given up. On
cancellation the place this call took is given up before the cancellation
propagates. `release` is for holders only (`NotHolder`, 409, otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

from crossway.coord.contention import Contention, Snapshot
from crossway.coord.model import Busy, Kind, Line, check_limit, check_name
from crossway.coord.queue import Contender, holders, waiting


@dataclass(frozen=True, slots=True)
class LineView:
    """A lock, semaphore or election as shown to people."""

    kind: str
    name: str
    limit: int | None
    holders: list[Contender]
    waiting: list[Contender]
    revision: int

    @classmethod
    def of(cls, line: Line, snap: Snapshot, limit: int | None) -> LineView:
        k = limit or line.limit
        return cls(
            line.kind, line.name, limit, holders(snap.line, k), waiting(snap.line, k), snap.revision
        )


class Locks:
    def __init__(self, contention: Contention) -> None:
        self._contention = contention

    async def acquire(self, name: str, session: str, *, wait: float) -> Contender:
        """Hold lock `name` for `session`; see the module header."""
        line = Line("lock", check_name(name))
        outcome = await self._contention.enter(line, session, wait=wait)
        if outcome.holding:
            return outcome.me
        raise _busy(line, outcome.snapshot.line[:1])

    async def release(self, name: str, session: str) -> Contender:
        line = Line("lock", check_name(name))
        return await self._contention.withdraw(line, session, holders_only=True)

    async def describe(self, name: str) -> LineView:
        line = Line("lock", check_name(name))
        return LineView.of(line, await self._contention.snapshot(line), 1)

    async def list(self) -> tuple[list[LineView], int]:
        """Every lock someone holds or waits for, by name, and the revision."""
        return await _list_lines(self._contention, "lock")


class Semaphores:
    def __init__(self, contention: Contention) -> None:
        self._contention = contention

    async def acquire(self, name: str, session: str, *, limit: int, wait: float) -> Contender:
        """Hold one of the `limit` places of semaphore `name`."""
        line = Line("semaphore", check_name(name), check_limit(limit))
        outcome = await self._contention.enter(line, session, wait=wait)
        if outcome.holding:
            return outcome.me
        raise _busy(line, outcome.snapshot.line[:limit])

    async def release(self, name: str, session: str) -> Contender:
        line = Line("semaphore", check_name(name))
        agreed = await self._contention.agreed_limit(line)
        line = Line("semaphore", line.name, agreed or 1)
        return await self._contention.withdraw(line, session, holders_only=True)

    async def describe(self, name: str) -> LineView:
        line = Line("semaphore", check_name(name))
        limit = await self._contention.agreed_limit(line)
        return LineView.of(line, await self._contention.snapshot(line), limit)

    async def list(self) -> tuple[list[LineView], int]:
        return await _list_lines(self._contention, "semaphore")


def _busy(line: Line, held_by: list[Contender]) -> Busy:
    if not held_by:
        return Busy(f"timed out waiting for {line.kind} {line.name}", holder=None)
    first = held_by[0]
    if line.kind == "semaphore":
        return Busy(
            f"timed out waiting for semaphore {line.name}: all {line.limit} places are held",
            holder=first.public(),
            holders=[c.public() for c in held_by],
        )
    return Busy(
        f"timed out waiting for lock {line.name}: held by session {first.session} "
        f"since revision {first.since}",
        holder=first.public(),
    )


async def _list_lines(contention: Contention, kind: Kind) -> tuple[list[LineView], int]:
    lines, revision = await contention.lines(kind)
    return [LineView.of(line, snap, limit) for line, snap, limit in lines], revision
