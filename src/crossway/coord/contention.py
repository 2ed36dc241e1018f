"""Joining a line, waiting for one's turn and leaving it, on any `Store`.

Locks, semaphores and elections all go through `Contention.enter`:

1. Join: one transaction creates `{prefix}{session}` bound to the session's
   lease, if the session exists and the key does not (so joining twice is
   harmless: the existing place is kept — re-entrant). A semaphore's join also
   checks and rewrites its limit key (`_limit_guard`): so the limit is agreed
   by everyone in line, and a stale limit is replaced only when nobody joined
   since the line was seen empty.
2. Wait: list the line; if the session holds, done; otherwise watch what
   `queue.standing` says (predecessor, or the holders for a semaphore's first
   waiter) from the listing's revision, and list again when it changes.
3. Leave: delete the key, but only the incarnation we made (compare on its
   create_revision), so a late clean-up never removes a newer place.

Cancellation and time-outs: a call that gives up — its wait ran out, it was
cancelled (client gone), or the store failed under it — removes the place it
created, running that clean-up to completion even while being cancelled. A
place the call did not create (re-entrant) is left alone unless the wait ran
out. `keep=True` (a queued candidacy) keeps the place in every case.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import msgspec

from crossway.coord.model import (
    KIND_PREFIX,
    SESSIONS_PREFIX,
    Entry,
    Kind,
    Limit,
    LimitMismatch,
    Line,
    NotHolder,
    SessionNotFound,
    Withdrawn,
    decode_limit,
    encode,
    parse_session,
)
from crossway.coord.queue import Contender, line_up, must_stamp, position_of, standing
from crossway.coord.sessions import Sessions
from crossway.coord.waiting import KeyWatch, finish, quietly
from crossway.core.errors import Unavailable
from crossway.store.errors import CompareFailed, LeaseNotFound
from crossway.store.protocol import Store
from crossway.store.types import Compare, Delete, Get, GetResult, KeyValue, Op, Put

JOIN_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class Snapshot:
    line: list[Contender]
    revision: int

    def find(self, session: str) -> tuple[int, Contender] | None:
        position = position_of(self.line, session)
        return None if position is None else (position, self.line[position])


@dataclass(frozen=True, slots=True)
class Outcome:
    holding: bool
    me: Contender
    snapshot: Snapshot
    """The line as last seen: when it found itself holding, or after it left."""


@dataclass(frozen=True, slots=True)
class _Joined:
    contender: Contender
    fresh: bool
    """Whether this call created the place (else it was there already)."""
    seen: Snapshot | None
    """The line as the join transaction saw it, when still current."""


class Contention:
    def __init__(self, store: Store, sessions: Sessions) -> None:
        self._store = store
        self._sessions = sessions

    async def snapshot(self, line: Line) -> Snapshot:
        listing = await self._store.range(line.prefix)
        return Snapshot(line_up(listing.kvs, line.prefix), listing.revision)

    async def lines(self, kind: Kind) -> tuple[list[tuple[Line, Snapshot, int | None]], int]:
        """Every line of `kind` that has contenders, by name, each with its
        agreed limit, and the revision of the listing."""
        prefix = KIND_PREFIX[kind]
        listing = await self._store.range(prefix)
        limits: dict[str, int | None] = {}
        grouped: dict[str, list[KeyValue]] = {}
        for kv in listing.kvs:
            name, sep, _ = kv.key[len(prefix) :].partition("/")
            if sep:
                grouped.setdefault(name, []).append(kv)
            else:
                limits[name] = decode_limit(kv.value)
        out = []
        for name, kvs in sorted(grouped.items()):
            limit = limits.get(name) if kind == "semaphore" else 1
            line = Line(kind, name, limit or 1)
            out.append((line, Snapshot(line_up(kvs, line.prefix), listing.revision), limit))
        return out, listing.revision

    async def agreed_limit(self, line: Line) -> int | None:
        if line.meta is None:
            return line.limit
        kv = await self._store.get(line.meta)
        return decode_limit(kv.value) if kv is not None else None

    async def enter(
        self, line: Line, session: str, *, value: str = "", wait: float, keep: bool = False
    ) -> Outcome:
        """Join `line` and wait up to `wait` seconds to hold a place in it.

        Returns an `Outcome`: holding, or not (the wait ran out; the place was
        left unless `keep`). Raises `SessionNotFound`, `LimitMismatch`,
        `Withdrawn` (the place vanished while waiting), store errors; see the
        module header for cancellation.
        """
        sid, lease = parse_session(session)
        joined = await self._join_safely(line, sid, lease, value)
        deadline = asyncio.get_running_loop().time() + wait
        try:
            held, seen = await self._await_turn(line, joined.contender, deadline, joined.seen)
        except BaseException:
            if joined.fresh and not keep:
                await quietly(self._leave(line, joined.contender))
            raise
        if held is not None:
            return Outcome(True, held, seen)
        if not keep:
            await finish(self._leave(line, joined.contender))
        after = await self.snapshot(line)
        found = after.find(sid)
        return Outcome(False, found[1] if found else joined.contender, after)

    async def withdraw(self, line: Line, session: str, *, holders_only: bool) -> Contender:
        """Take `session` out of `line`; with `holders_only`, only if it holds.

        Raises `NotHolder` (409) when it is not in line (or only waits), or
        `SessionNotFound` when the session itself has ended."""
        sid, _ = parse_session(session)
        snap = await self.snapshot(line)
        found = snap.find(sid)
        if found is None:
            await self._sessions.record(sid)  # SessionNotFound says more than NotHolder
            raise NotHolder(f"session {sid} is not in {line.kind} {line.name}")
        position, me = found
        if holders_only and position >= line.limit:
            raise NotHolder(
                f"session {sid} does not hold {line.kind} {line.name}: it waits at position "
                f"{position - line.limit + 1}"
            )
        if not await self._leave(line, me):
            raise NotHolder(f"session {sid} left {line.kind} {line.name} meanwhile")
        if len(snap.line) == 1:
            await self._drop_idle_limit(line)
        return me

    # Joining.

    async def _join_safely(self, line: Line, sid: str, lease: int, value: str) -> _Joined:
        task = asyncio.ensure_future(self._join(line, sid, lease, value))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await quietly(self._undo_join(line, task))
            raise

    async def _undo_join(self, line: Line, task: asyncio.Future[_Joined]) -> None:
        joined = await task
        if joined.fresh:
            await self._leave(line, joined.contender)

    async def _join(self, line: Line, sid: str, lease: int, value: str) -> _Joined:
        record = await self._sessions.record(sid)
        key, session_key = line.key(sid), SESSIONS_PREFIX + sid
        entry = Entry(session=sid, owner=record.name, value=value)
        for _ in range(JOIN_ATTEMPTS):
            guards, extra = await self._limit_guard(line)
            listing = Get(line.prefix, prefix=True)  # the line as of this very revision
            try:
                result = await self._store.txn(
                    [Compare.exists(session_key), Compare.absent(key), *guards],
                    [Put(key, encode(entry), lease), *extra, listing],
                    [Get(key), Get(session_key), listing],
                )
            except LeaseNotFound:
                raise SessionNotFound(sid) from None
            seen = Snapshot(line_up(_kvs(result.results[-1]), line.prefix), result.revision)
            if result.succeeded:
                made = Contender(key, sid, result.revision, result.revision, lease, entry)
                return _Joined(made, True, seen)
            existing, session_kv = (_only(r) for r in result.results[:2])
            if session_kv is None:
                raise SessionNotFound(sid)
            if existing is not None:
                me = await self._proclaim(line, existing, value)
                return _Joined(
                    me, False, seen if me.mod_revision == existing.mod_revision else None
                )
            # Only the limit key moved under us (set or replaced meanwhile): look again.
        raise Unavailable(f"{line.kind} {line.name} is too contended to join; retry")

    async def _limit_guard(self, line: Line) -> tuple[list[Compare], list[Op]]:
        """Compares and writes that keep a semaphore's limit agreed.

        Every join rewrites the limit key, so its mod_revision moves whenever
        anyone joins. A join with the agreed limit compares the key's *value*:
        joiners never conflict with each other. Replacing a stale limit (only
        when the line is seen empty) compares the key's *mod_revision* as read
        before the listing: it fails if anybody joined since.
        """
        if line.meta is None:
            return [], []
        put = Put(line.meta, encode(Limit(line.limit)))
        current = await self._store.get(line.meta)
        if current is None:
            return [Compare.absent(line.meta)], [put]
        agreed = decode_limit(current.value)
        if agreed == line.limit:
            return [Compare.value_is(line.meta, current.value)], [put]
        snap = await self.snapshot(line)
        if snap.line:
            raise LimitMismatch(
                f"semaphore {line.name} has limit {agreed} while {len(snap.line)} "
                f"session(s) hold or wait for it; asked for limit {line.limit}",
                limit=agreed,
            )
        return [Compare.mod_revision_is(line.meta, current.mod_revision)], [put]

    async def _proclaim(self, line: Line, kv: KeyValue, value: str) -> Contender:
        """Our existing place, with its value replaced if a new one was given."""
        me = line_up([kv], line.prefix)[0]
        if me.entry.value == value:
            return me
        entry = msgspec.structs.replace(me.entry, value=value)
        return await self._rewrite(me, entry) or me

    async def _rewrite(self, me: Contender, entry: Entry) -> Contender | None:
        """Write our own key in place (same lease, same create_revision); None
        when it changed meanwhile."""
        try:
            put = await self._store.put(
                me.key, encode(entry), lease=me.lease, if_mod_revision=me.mod_revision
            )
        except CompareFailed:
            return None
        except LeaseNotFound:
            raise SessionNotFound(me.session) from None
        return Contender(me.key, me.session, me.fence, put.revision, me.lease, entry)

    # Waiting.

    async def _await_turn(
        self, line: Line, me: Contender, deadline: float, seen: Snapshot | None
    ) -> tuple[Contender | None, Snapshot]:
        """Our place once it holds (None when `deadline`, in loop time, passes
        first) and the last listing; `seen` is a listing to start from."""
        whole_line = line.limit > 1
        async with KeyWatch(self._store, line.prefix, whole_line=whole_line) as follower:
            woke = 0
            while True:
                snap = seen if seen is not None else await self.snapshot(line)
                seen = None
                found = snap.find(me.session)
                if found is None or found[1].fence != me.fence:
                    raise await self._gone(line, me)
                position, current = found
                where = standing(snap.line, position, line.limit)
                if where.holding:
                    held = await self._stamp(line, current, woke)
                    if held is not None:
                        return held, snap
                    continue
                remaining = deadline - asyncio.get_running_loop().time()
                changed = None
                if remaining > 0:
                    changed = await follower.next_change(
                        where.watch,
                        after=snap.revision,
                        wait=remaining,
                        deletes_only=line.limit == 1,
                    )
                if changed is None:
                    return None, snap
                woke = max(woke, changed)

    async def _stamp(self, line: Line, me: Contender, woke: int) -> Contender | None:
        if not must_stamp(me, limit=line.limit, waited=woke > 0):
            return me
        entry = msgspec.structs.replace(me.entry, acquired=woke or me.fence)
        return await self._rewrite(me, entry)

    async def _gone(self, line: Line, me: Contender) -> Exception:
        if await self._store.get(SESSIONS_PREFIX + me.session) is None:
            return SessionNotFound(me.session)
        return Withdrawn(f"session {me.session}'s place in {line.kind} {line.name} was removed")

    # Leaving.

    async def _leave(self, line: Line, me: Contender) -> bool:
        result = await self._store.txn(
            [Compare(me.key, "create", "==", me.fence)], [Delete(me.key)]
        )
        return result.succeeded

    async def _drop_idle_limit(self, line: Line) -> None:
        """Forget a semaphore's limit once nobody is in line. Any join bumps the
        limit key, so the compare fails if someone joined after the listing."""
        if line.meta is None:
            return
        current = await self._store.get(line.meta)
        snap = await self.snapshot(line)
        if current is None or snap.line:
            return
        with contextlib.suppress(CompareFailed):
            await self._store.delete(line.meta, if_mod_revision=current.mod_revision)


def _kvs(result: object) -> list[KeyValue]:
    assert isinstance(result, GetResult)
    return result.kvs


def _only(result: object) -> KeyValue | None:
    kvs = _kvs(result)
    return kvs[0] if kvs else None
