"""Semaphores on every backend: never more than K holders, an agreed limit,
and the first waiter woken by whichever holder leaves."""

from __future__ import annotations

import asyncio
import random

import pytest

from crossway.coord import Busy, Coordination, LimitMismatch, NotHolder

from .helpers import new_session, until, waiting


async def test_never_more_than_k_holders(coord: Coordination, name: str) -> None:
    limit, total = 3, 240
    holding: set[str] = set()
    peak = [0]
    remaining = [total]
    rng = random.Random(7)

    async def contender(label: str) -> None:
        s = await new_session(coord, label)
        while remaining[0] > 0:
            await coord.semaphores.acquire(name, s, limit=limit, wait=60)
            remaining[0] -= 1
            holding.add(s)
            assert len(holding) <= limit, f"{len(holding)} holders of a semaphore of {limit}"
            peak[0] = max(peak[0], len(holding))
            await asyncio.sleep(0.005 + rng.random() * 0.005)  # hold a while: holders overlap
            holding.discard(s)
            await coord.semaphores.release(name, s)

    await asyncio.wait_for(asyncio.gather(*(contender(f"c{i}") for i in range(12))), 120)
    assert peak[0] == limit, "the places were used"
    view = await coord.semaphores.describe(name)
    assert view.holders == []
    assert view.waiting == []


async def test_first_waiter_wakes_when_any_holder_leaves(coord: Coordination, name: str) -> None:
    a, b, c, d = [await new_session(coord, x) for x in "abcd"]
    await coord.semaphores.acquire(name, a, limit=2, wait=0)
    await coord.semaphores.acquire(name, b, limit=2, wait=0)
    waiting_c = asyncio.create_task(coord.semaphores.acquire(name, c, limit=2, wait=30))
    await until(lambda: waiting(coord, "semaphore", name, 1))
    waiting_d = asyncio.create_task(coord.semaphores.acquire(name, d, limit=2, wait=30))
    await until(lambda: waiting(coord, "semaphore", name, 2))
    await coord.semaphores.release(name, b)  # not the oldest holder
    assert (await asyncio.wait_for(waiting_c, 5)).session == c
    assert not waiting_d.done()
    await coord.semaphores.release(name, a)
    assert (await asyncio.wait_for(waiting_d, 5)).session == d
    view = await coord.semaphores.describe(name)
    assert [h.session for h in view.holders] == [c, d]
    assert view.limit == 2


async def test_two_holders_leaving_at_once_promote_two(coord: Coordination, name: str) -> None:
    holders = [await new_session(coord) for _ in range(2)]
    for s in holders:
        await coord.semaphores.acquire(name, s, limit=2, wait=0)
    waiters = [await new_session(coord) for _ in range(3)]
    tasks = []
    for i, s in enumerate(waiters):
        tasks.append(asyncio.create_task(coord.semaphores.acquire(name, s, limit=2, wait=30)))
        await until(lambda n=i + 1: waiting(coord, "semaphore", name, n))
    for s in holders:
        await coord.sessions.destroy(s)
    done = await asyncio.wait_for(asyncio.gather(*tasks[:2]), 5)
    assert [h.session for h in done] == waiters[:2]
    assert not tasks[2].done()
    tasks[2].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[2]


async def test_limit_is_agreed_and_reset_when_idle(coord: Coordination, name: str) -> None:
    a, b = await new_session(coord), await new_session(coord)
    await coord.semaphores.acquire(name, a, limit=2, wait=0)
    with pytest.raises(LimitMismatch) as mismatch:
        await coord.semaphores.acquire(name, b, limit=5, wait=0)
    assert mismatch.value.details["limit"] == 2
    assert mismatch.value.to_json()["error"]["code"] == "limit_mismatch"
    await coord.semaphores.release(name, a)
    assert (await coord.semaphores.describe(name)).limit is None, "an idle limit is forgotten"
    await coord.semaphores.acquire(name, b, limit=5, wait=0)
    assert (await coord.semaphores.describe(name)).limit == 5


async def test_stale_limit_is_replaced_once_nobody_is_in_line(
    coord: Coordination, name: str
) -> None:
    a, b = await new_session(coord), await new_session(coord)
    await coord.semaphores.acquire(name, a, limit=1, wait=0)
    await coord.sessions.destroy(a)  # leaves the limit behind: nobody released it
    assert (await coord.semaphores.describe(name)).limit == 1
    held = await coord.semaphores.acquire(name, b, limit=4, wait=0)
    assert held.session == b
    assert (await coord.semaphores.describe(name)).limit == 4


async def test_busy_names_the_holders_and_release_needs_a_holder(
    coord: Coordination, name: str
) -> None:
    a, b = await new_session(coord), await new_session(coord)
    await coord.semaphores.acquire(name, a, limit=1, wait=0)
    with pytest.raises(Busy) as busy:
        await coord.semaphores.acquire(name, b, limit=1, wait=0.05)
    assert [h["session"] for h in busy.value.details["holders"]] == [a]
    with pytest.raises(NotHolder):
        await coord.semaphores.release(name, b)
    listed, _ = await coord.semaphores.list()
    assert [(v.name, v.limit, len(v.holders)) for v in listed if v.name == name] == [(name, 1, 1)]
