"""Locks on every backend: fences, fairness, time-outs, cancellation, expiry."""

from __future__ import annotations

import asyncio
import time

import pytest

from crossway.coord import Busy, Coordination, NotHolder, SessionNotFound
from crossway.store import Store

from .helpers import new_session, until, waiting


async def test_acquire_release_and_fences_increase(coord: Coordination, name: str) -> None:
    a, b = await new_session(coord, "a"), await new_session(coord, "b")
    first = await coord.locks.acquire(name, a, wait=0)
    assert first.session == a
    assert first.entry.owner == "a"
    assert first.since == first.fence
    again = await coord.locks.acquire(name, a, wait=0)
    assert again.fence == first.fence, "re-acquiring by the holder is idempotent"
    with pytest.raises(Busy) as busy:
        await coord.locks.acquire(name, b, wait=0)
    assert busy.value.details["holder"]["session"] == a
    assert busy.value.to_json()["error"]["code"] == "conflict"
    view = await coord.locks.describe(name)
    assert [h.session for h in view.holders] == [a]
    assert view.waiting == []
    released = await coord.locks.release(name, a)
    assert released.fence == first.fence
    second = await coord.locks.acquire(name, b, wait=0)
    assert second.fence > first.fence
    third = await coord.locks.release(name, b)
    assert third.session == b
    assert (await coord.locks.acquire(name, a, wait=0)).fence > second.fence


async def test_release_only_by_the_holder(coord: Coordination, name: str) -> None:
    a, b = await new_session(coord), await new_session(coord)
    await coord.locks.acquire(name, a, wait=0)
    with pytest.raises(NotHolder):
        await coord.locks.release(name, b)
    waiter = asyncio.create_task(coord.locks.acquire(name, b, wait=30))
    await until(lambda: waiting(coord, "lock", name, 1))
    with pytest.raises(NotHolder, match="waits at position 1"):
        await coord.locks.release(name, b)
    await coord.locks.release(name, a)
    assert (await waiter).session == b


async def test_unknown_session_is_refused(coord: Coordination, name: str) -> None:
    with pytest.raises(SessionNotFound):
        await coord.locks.acquire(name, "abc123", wait=0)
    a = await new_session(coord)
    await coord.sessions.destroy(a)
    with pytest.raises(SessionNotFound):
        await coord.locks.acquire(name, a, wait=0)
    with pytest.raises(SessionNotFound):
        await coord.locks.release(name, a)


async def test_waiters_are_served_in_order(coord: Coordination, name: str) -> None:
    holder = await new_session(coord)
    first = await coord.locks.acquire(name, holder, wait=0)
    sessions = [await new_session(coord, f"w{i}") for i in range(5)]
    order: list[str] = []
    tasks = []
    for i, s in enumerate(sessions):
        tasks.append(asyncio.create_task(_take_and_give(coord, name, s, order)))
        await until(lambda n=i + 1: waiting(coord, "lock", name, n))
    await coord.locks.release(name, holder)
    fences = await asyncio.gather(*tasks)
    assert order == sessions, "first come, first served"
    assert fences == sorted(fences)
    assert fences[0] > first.fence
    assert len(set(fences)) == len(fences)


async def _take_and_give(coord: Coordination, name: str, s: str, order: list[str]) -> int:
    held = await coord.locks.acquire(name, s, wait=30)
    order.append(s)
    await coord.locks.release(name, s)
    return held.fence


async def test_timeout_gives_up_the_place(coord: Coordination, name: str) -> None:
    a, b, c = await new_session(coord), await new_session(coord), await new_session(coord)
    await coord.locks.acquire(name, a, wait=0)
    with pytest.raises(Busy):
        await coord.locks.acquire(name, b, wait=0.2)
    view = await coord.locks.describe(name)
    assert [w.session for w in view.waiting] == [], "a timed-out waiter leaves the line"
    waiter = asyncio.create_task(coord.locks.acquire(name, c, wait=30))
    await until(lambda: waiting(coord, "lock", name, 1))
    await coord.locks.release(name, a)
    assert (await waiter).session == c


async def test_cancelled_acquire_leaves_no_key(coord: Coordination, name: str) -> None:
    a, b, c = await new_session(coord), await new_session(coord), await new_session(coord)
    await coord.locks.acquire(name, a, wait=0)
    waiter = asyncio.create_task(coord.locks.acquire(name, b, wait=30))
    await until(lambda: waiting(coord, "lock", name, 1))
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (await coord.locks.describe(name)).waiting == []
    # Cancelled at every point of its life, an acquire never leaves a place behind.
    for delay in (0, 0.0005, 0.001, 0.002, 0.005):
        task = asyncio.create_task(coord.locks.acquire(name, c, wait=30))
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await coord.locks.describe(name)).waiting == []


async def test_destroying_a_session_releases_and_wakes_the_next(
    coord: Coordination, name: str
) -> None:
    a, b = await new_session(coord), await new_session(coord)
    held = await coord.locks.acquire(name, a, wait=0)
    waiter = asyncio.create_task(coord.locks.acquire(name, b, wait=30))
    await until(lambda: waiting(coord, "lock", name, 1))
    released = await coord.sessions.destroy(a)
    assert released == [f"locks/{name}"]
    got = await asyncio.wait_for(waiter, 5)
    assert got.session == b
    assert got.fence > held.fence
    assert got.since > got.fence, "a waiter holds from the revision its predecessor left"


async def test_session_expiry_wakes_the_next_waiter_within_one_ttl(
    durable_store: Store, name: str
) -> None:
    coord = Coordination(durable_store)
    ttl = 2.0
    a = await new_session(coord, "doomed", ttl=ttl)
    b = await new_session(coord, "next", ttl=30)
    await coord.locks.acquire(name, a, wait=0)
    await coord.sessions.renew(a)
    last_renewal = time.monotonic()
    got = await coord.locks.acquire(name, b, wait=10)
    elapsed = time.monotonic() - last_renewal
    assert got.session == b
    # The lease runs out one TTL after the last renewal; the store's expiry
    # sweep (etcd checks every 500 ms) and the wake-up add under a second.
    assert elapsed <= ttl + 1.0, f"next waiter took {elapsed:.2f}s"


async def test_mutual_exclusion_under_contention(durable_store: Store, name: str) -> None:
    """20 contenders, 1,000 acquisitions: the history never shows two holders,
    and fences strictly increase from one acquisition to the next."""
    coord = Coordination(durable_store)
    history: list[tuple[str, str, int]] = []
    remaining = [1000]

    async def contender(label: str) -> None:
        s = await new_session(coord, label, ttl=60)
        rounds = 0
        while remaining[0] > 0:
            held = await coord.locks.acquire(name, s, wait=60)
            remaining[0] -= 1
            history.append(("acquire", s, held.fence))
            await asyncio.sleep(0)  # let everyone else run while we hold
            history.append(("release", s, held.fence))
            await coord.locks.release(name, s)
            rounds += 1
            if rounds % 20 == 0:
                await coord.sessions.renew(s)  # however slow the machine, stay alive

    await asyncio.wait_for(asyncio.gather(*(contender(f"c{i}") for i in range(20))), 240)
    check_lock_history(history)
    assert sum(1 for op, _, _ in history if op == "acquire") >= 1000


def check_lock_history(history: list[tuple[str, str, int]]) -> None:
    holder: tuple[str, int] | None = None
    last_fence = 0
    for op, s, fence in history:
        if op == "acquire":
            assert holder is None, f"{s} acquired while {holder} held the lock"
            assert fence > last_fence, f"fence {fence} after {last_fence}"
            holder, last_fence = (s, fence), fence
        else:
            assert holder == (s, fence), f"{s} released what it did not hold"
            holder = None
