"""The line's pure rules, and a randomised run of the whole waiting scheme.

The property test drives real `Coordination` code on a memory store through
random joins, releases, session ends and cancellations, and checks after each
step that (safety) the sessions whose acquire returned are exactly the first K
of the line, never more than K; (liveness) no waiter is left asleep while its
turn has come; (no herd) the listings one step causes do not grow with the
number of waiters.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crossway.coord import Coordination, SessionNotFound
from crossway.coord.model import Entry, Line, encode
from crossway.coord.queue import line_up, must_stamp, standing, watch_targets
from crossway.store.memory import open_memory_store
from crossway.store.types import KeyValue

from .helpers import until, waiting


def kv(prefix: str, session: str, create: int, **entry: Any) -> KeyValue:
    value = encode(Entry(session=session, **entry))
    return KeyValue(prefix + session, value, create, create, 1, lease=int(session, 16))


def test_line_is_ordered_by_create_revision_and_skips_foreign_keys() -> None:
    prefix = "/locks/job/"
    kvs = [
        kv(prefix, "b", 9),
        kv(prefix, "a", 4),
        KeyValue(prefix + "c/deeper", b"x", 2, 2, 1),
        KeyValue(prefix + "d", b"not json", 7, 7, 1),
    ]
    line = line_up(kvs, prefix)
    assert [c.session for c in line] == ["a", "d", "b"]
    assert [c.fence for c in line] == [4, 7, 9]
    assert line[1].entry == Entry(session="d"), "an unreadable value is an anonymous contender"


def test_watch_targets_are_the_predecessor_or_the_holders() -> None:
    prefix = "/semaphores/s/"
    line = line_up([kv(prefix, f"{i:x}", 10 + i) for i in range(1, 7)], prefix)
    assert watch_targets(line, 0, 2) == []
    assert watch_targets(line, 1, 2) == []
    assert [c.session for c in watch_targets(line, 2, 2)] == ["1", "2"], "first waiter"
    assert [c.session for c in watch_targets(line, 4, 2)] == ["4"], "predecessor"
    assert standing(line, 1, 2).holding
    assert standing(line, 3, 2).watch == frozenset({prefix + "3"})
    lock = line_up([kv(prefix, "1", 3), kv(prefix, "2", 5)], prefix)
    assert standing(lock, 1, 1).watch == frozenset({prefix + "1"})


def test_who_records_acquisition() -> None:
    prefix = "/locks/l/"
    fresh = line_up([kv(prefix, "1", 3)], prefix)[0]
    stamped = line_up([kv(prefix, "1", 3, acquired=8)], prefix)[0]
    assert stamped.since == 8
    assert fresh.since == 3
    assert not must_stamp(fresh, limit=1, waited=False)
    assert must_stamp(fresh, limit=1, waited=True)
    assert must_stamp(fresh, limit=2, waited=False), "a semaphore holder tells its successor"
    assert not must_stamp(stamped, limit=2, waited=True)


Step = tuple[str, int]
# Each step picks its target among those it can affect (the n-th holder, the
# n-th waiter …), so that every step does something.
MAX_LISTINGS_PER_STEP = 6
steps = st.lists(
    st.tuples(st.sampled_from(["join"] * 3 + ["release", "end", "cancel"]), st.integers(0, 5)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(limit=st.integers(1, 3), script=steps)
# The first waiter must hear any holder leave, not only its predecessor:
@example(limit=2, script=[("join", 0)] * 3 + [("release", 0)])
# A waiter promoted to holder must tell its successor it is now first:
@example(limit=2, script=[("join", 0)] * 4 + [("release", 0), ("release", 0)])
def test_waiting_scheme_is_safe_live_and_herd_free(limit: int, script: list[Step]) -> None:
    asyncio.run(_simulate(limit, script))


class _Run:
    def __init__(self, coord: Coordination, limit: int) -> None:
        self.coord = coord
        self.limit = limit
        self.sessions: dict[int, str] = {}
        self.waiting: dict[int, asyncio.Task[Any]] = {}
        self.held: list[int] = []
        self.joined = 0

    async def step(self, op: str, n: int) -> None:
        if op == "join":
            who = self.joined
            self.joined += 1
            sid = await self._new_session(who)
            acquire = self.coord.semaphores.acquire("s", sid, limit=self.limit, wait=3600)
            self.waiting[who] = asyncio.create_task(acquire)
        elif op == "release" and self.held:
            who = self.held.pop(n % len(self.held))
            await self.coord.semaphores.release("s", self.sessions[who])
        elif op == "end" and self.sessions:
            who = sorted(self.sessions)[n % len(self.sessions)]
            if who in self.held:
                self.held.remove(who)
            await self.coord.sessions.destroy(self.sessions.pop(who))
        elif op == "cancel" and self.waiting:
            task = self.waiting.pop(sorted(self.waiting)[n % len(self.waiting)])
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _new_session(self, who: int) -> str:
        self.sessions[who] = (await self.coord.sessions.create(ttl=3600)).id
        return self.sessions[who]

    def collect(self) -> None:
        for who, task in list(self.waiting.items()):
            if not task.done():
                continue
            del self.waiting[who]
            error = task.exception()
            if error is None:
                self.held.append(who)
            else:
                assert isinstance(error, SessionNotFound), error

    async def holders_in_store(self) -> set[str]:
        snap = await self.coord.semaphores.describe("s")
        return {c.session for c in snap.holders}

    async def settled(self) -> bool:
        self.collect()
        mine = {self.sessions[w] for w in self.held}
        return mine == await self.holders_in_store()


async def _simulate(limit: int, script: list[Step]) -> None:
    store = open_memory_store()
    ranges = [0]
    real_range = store.range

    async def counting_range(prefix: str, *, limit: int = 0) -> Any:
        ranges[0] += 1
        return await real_range(prefix, limit=limit)

    store.range = counting_range  # type: ignore[method-assign]
    run = _Run(Coordination(store), limit)
    try:
        for op, who in script:
            before = ranges[0]
            await run.step(op, who)
            for _ in range(400):
                await asyncio.sleep(0)
            assert await run.settled(), f"after {op} {who}: a waiter whose turn came still sleeps"
            assert len(run.held) <= limit
            # One step wakes at most a couple of waiters, however many wait.
            assert ranges[0] - before <= MAX_LISTINGS_PER_STEP, f"{op}: {ranges[0] - before}"
    finally:
        for task in run.waiting.values():
            task.cancel()
        await asyncio.gather(*run.waiting.values(), return_exceptions=True)
        await store.close()


async def _counting(store: Any) -> list[int]:
    count = [0]
    real_range = store.range

    async def counting_range(prefix: str, *, limit: int = 0) -> Any:
        count[0] += 1
        return await real_range(prefix, limit=limit)

    store.range = counting_range
    return count


@pytest.mark.parametrize("limit", [1, 3])
async def test_a_release_wakes_one_waiter_among_many(limit: int) -> None:
    store = open_memory_store()
    listings = await _counting(store)
    coord = Coordination(store)
    sessions = [(await coord.sessions.create(ttl=60)).id for _ in range(limit + 20)]
    tasks = [
        asyncio.create_task(coord.semaphores.acquire("s", s, limit=limit, wait=60))
        for s in sessions
    ]
    await until(lambda: waiting(coord, "semaphore", "s", 20))
    for _ in range(50):
        await asyncio.sleep(0)
    try:
        for turn in range(5):
            before = listings[0]
            await coord.semaphores.release("s", sessions[turn])
            await asyncio.wait_for(tasks[limit + turn], 5)
            for _ in range(50):
                await asyncio.sleep(0)
            # The releaser's own listing, the woken waiter's, and (semaphores)
            # the successor it tells that it is first now; not one per waiter.
            assert listings[0] - before <= 4, f"{listings[0] - before} listings for one release"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()


def test_line_keys() -> None:
    line = Line("semaphore", "pool", 3)
    assert line.prefix == "/semaphores/pool/"
    assert line.meta == "/semaphores/pool"
    assert line.key("ab") == "/semaphores/pool/ab"
    assert Line("lock", "x").meta is None
