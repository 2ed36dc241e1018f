from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.core.errors import InvalidArgument
from crossway.sdk.client import Client
from crossway.sdk.coordination import (
    LockLost,
    LockNotAcquired,
    call,
    job_election,
    next_slot,
)
from crossway.testing.server import CrosswayServer, shared_server

# -- pure helpers ----------------------------------------------------------------------


@given(st.floats(0, 1e10), st.floats(0.01, 1e5))
def test_next_slot_is_the_next_multiple(now: float, every: float) -> None:
    slot = next_slot(now, every)
    assert slot > now
    assert slot - every <= now + 1e-6 * max(1.0, now)


def test_job_election_names_are_valid() -> None:
    assert job_election("nightly") == "job.nightly"
    assert job_election("app.jobs.<locals>.tick") == "job.app.jobs.-locals-.tick"
    assert len(job_election("x" * 300)) == 128


async def test_call_runs_sync_and_async_callbacks_and_logs_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Any] = []

    async def later(x: int) -> None:
        seen.append(("async", x))

    def broken() -> None:
        raise RuntimeError("boom")

    await call(lambda x: seen.append(("sync", x)), 1)
    await call(later, 2)
    await call(broken)
    await call(None)
    assert seen == [("sync", 1), ("async", 2)]
    assert "boom" in caplog.text


# -- against a real control plane ---------------------------------------------------

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> CrosswayServer:
    return shared_server("memory")  # one for every module; names here are this module's


@pytest.fixture
async def clients(server: CrosswayServer, tmp_path: Path) -> AsyncIterator[Callable[[], Client]]:
    made: list[Client] = []

    def make() -> Client:
        client = Client(
            url=server.url,
            register=False,
            address="127.0.0.1",
            cache_dir=tmp_path / f"c{len(made)}",
            instance_id=f"coord-{len(made)}",
        )
        made.append(client)
        return client

    yield make
    for client in made:
        await client.stop()


async def eventually(check: Callable[[], bool], within: float = 5.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def end_session(url: str, session: str) -> None:
    httpx2.delete(f"{url}/v1/sessions/{session}", timeout=5)


async def test_lock_mutual_exclusion_between_two_clients(
    clients: Callable[[], Client],
) -> None:
    a, b = clients(), clients()
    await a.start()
    await b.start()
    inside, most = 0, 0
    fences: list[int] = []

    async def worker(client: Client) -> None:
        nonlocal inside, most
        for _ in range(4):
            async with client.lock("coord-mutex", ttl="2s") as fence:
                inside += 1
                most = max(most, inside)
                fences.append(fence)
                await asyncio.sleep(0.02)
                inside -= 1

    await asyncio.wait_for(asyncio.gather(worker(a), worker(b)), 20)
    assert most == 1
    assert len(fences) == 8
    assert fences == sorted(fences)
    assert len(set(fences)) == 8  # every acquisition has its own, larger fence


async def test_lock_wait_runs_out(clients: Callable[[], Client]) -> None:
    a, b = clients(), clients()
    await a.start()
    await b.start()
    async with a.lock("coord-busy"):
        started = time.monotonic()
        with pytest.raises(LockNotAcquired):
            async with b.lock("coord-busy", wait=0.3):
                pytest.fail("acquired a held lock")
        assert time.monotonic() - started < 3.0
    async with b.lock("coord-busy", wait=1.0) as fence:  # free again
        assert fence > 0


async def test_cancelled_wait_gives_up_its_place(clients: Callable[[], Client]) -> None:
    a, b, c = clients(), clients(), clients()
    for client in (a, b, c):
        await client.start()
    async with a.lock("coord-line"):
        entered = asyncio.Event()

        async def waiter() -> None:
            async with b.lock("coord-line"):
                entered.set()

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not entered.is_set()
    async with c.lock("coord-line", wait=1.0):  # b is not in the way
        pass


async def test_lost_session_cancels_the_block(
    server: CrosswayServer, clients: Callable[[], Client]
) -> None:
    a = clients()
    await a.start()
    lock = a.lock("coord-lost", ttl="1s")
    reached_end = False

    async def hold() -> None:
        nonlocal reached_end
        async with lock:
            assert lock.held
            assert lock._session is not None
            await asyncio.to_thread(end_session, server.url, lock._session.id)
            await asyncio.sleep(10)
            reached_end = True

    started = time.monotonic()
    with pytest.raises(LockLost, match="coord-lost"):
        await hold()
    assert not reached_end
    assert time.monotonic() - started < 3.0
    assert not lock.held
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # not left cancelled: it carries on normally
    await asyncio.sleep(0)


async def test_lost_session_without_cancelling_is_visible(
    server: CrosswayServer, clients: Callable[[], Client]
) -> None:
    a = clients()
    await a.start()
    lock = a.lock("coord-flag", ttl="1s", cancel_on_loss=False)
    async with lock:
        assert lock._session is not None
        await asyncio.to_thread(end_session, server.url, lock._session.id)
        await eventually(lambda: not lock.held, within=3.0)
        with pytest.raises(LockLost):
            lock.check()


async def test_bad_lock_name_is_refused(clients: Callable[[], Client]) -> None:
    with pytest.raises(InvalidArgument):
        clients().lock("no spaces")


async def test_leader_failover_when_one_stops(clients: Callable[[], Client]) -> None:
    a, b = clients(), clients()
    events: list[tuple[str, str, int | None]] = []

    def watch(who: str) -> dict[str, Any]:
        return {
            "on_elected": lambda fence: events.append((who, "elected", fence)),
            "on_revoked": lambda: events.append((who, "revoked", None)),
        }

    leaders = {"a": a.leader("coord-lead", ttl="2s", **watch("a"))}
    await a.start()  # a leader declared before start campaigns once started
    first = await asyncio.wait_for(leaders["a"].wait_elected(), 5)
    await b.start()
    leaders["b"] = b.leader("coord-lead", ttl="2s", **watch("b"))  # after: at once
    await asyncio.sleep(0.3)
    assert leaders["a"].is_leader
    assert not leaders["b"].is_leader
    current = await leaders["b"].current()
    assert current is not None
    assert current["value"] == a.instance_id
    await a.stop()
    took = await eventually(lambda: leaders["b"].is_leader, within=5.0)
    assert took < 1.5  # a resigned: no waiting for its TTL
    assert leaders["b"].fence is not None
    assert leaders["b"].fence > first
    assert events == [
        ("a", "elected", first),
        ("a", "revoked", None),
        ("b", "elected", leaders["b"].fence),
    ]


async def test_leader_campaigns_again_after_losing_its_session(
    server: CrosswayServer, clients: Callable[[], Client]
) -> None:
    a = clients()
    revoked = asyncio.Event()
    running: list[str] = []

    async def lead(fence: int) -> None:
        running.append("start")
        try:
            await asyncio.sleep(60)  # work for as long as leading
        finally:
            running.append("cancelled")

    leader = a.leader("coord-again", ttl="1s", on_elected=lead, on_revoked=revoked.set)
    await a.start()
    await asyncio.wait_for(leader.wait_elected(), 5)
    current = await leader.current()
    assert current is not None
    await asyncio.to_thread(end_session, server.url, current["session"])
    await asyncio.wait_for(revoked.wait(), 3)
    await eventually(lambda: leader.terms == 2 and leader.is_leader, within=5.0)
    assert running[:2] == ["start", "cancelled"]


async def test_scheduled_job_runs_on_one_client_only(clients: Callable[[], Client]) -> None:
    a, b = clients(), clients()
    runs = {"a": 0, "b": 0}

    @a.scheduled(every="200ms", name="coord-tick")
    async def tick_a() -> None:
        runs["a"] += 1

    @b.scheduled(every="200ms", name="coord-tick")
    def tick_b() -> None:  # a sync job runs in a worker thread
        runs["b"] += 1

    assert tick_a.__name__ == "tick_a"  # the function is returned unchanged
    await a.start()
    await b.start()
    await asyncio.sleep(1.5)
    assert sorted(runs.values())[0] == 0
    assert sorted(runs.values())[1] >= 3


async def test_stop_leaves_no_task_behind(clients: Callable[[], Client]) -> None:
    before = asyncio.all_tasks()
    a = clients()
    a.leader("coord-tasks", ttl="2s")

    @a.scheduled(every="1s", name="coord-tasks-job")
    def job() -> None:
        pass

    await a.start()
    await asyncio.sleep(0.2)
    async with a.lock("coord-tasks-lock"):
        pass
    await a.stop()
    assert asyncio.all_tasks() - before == set()


async def test_outside_cancellation_of_a_block_stays_a_cancellation(
    clients: Callable[[], Client],
) -> None:
    a, b = clients(), clients()
    await a.start()
    await b.start()
    holding = asyncio.Event()

    async def hold() -> None:
        async with a.lock("coord-outer"):
            holding.set()
            await asyncio.sleep(10)

    task = asyncio.ensure_future(hold())
    await holding.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with b.lock("coord-outer", wait=1.0):  # released on the way out
        pass
