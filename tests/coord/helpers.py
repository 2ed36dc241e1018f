"""Small helpers shared by the coordination tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from crossway.coord import Coordination


async def new_session(coord: Coordination, label: str = "", ttl: float = 60.0) -> str:
    return (await coord.sessions.create(ttl=ttl, name=label)).id


async def until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    """Poll `check` until it holds; fail the test after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"condition not reached within {within}s")


async def waiting(coord: Coordination, kind: str, name: str, count: int) -> bool:
    """Whether exactly `count` sessions wait in the named line."""
    describe = {
        "lock": coord.locks.describe,
        "semaphore": coord.semaphores.describe,
        "election": coord.elections.describe,
    }[kind]
    return len((await describe(name)).waiting) == count
