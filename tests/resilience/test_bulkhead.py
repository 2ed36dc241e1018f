"""The bulkhead never lets more than max_concurrent calls in, nor loses a slot."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.resilience.bulkhead import Bulkhead, BulkheadCore, BulkheadFullError

# -- the pure core -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=0, max_value=4),
    st.lists(
        st.tuples(st.sampled_from(["arrive", "leave", "give_up"]), st.integers(0, 20)), max_size=150
    ),
)
def test_core_never_exceeds_limits_and_serves_in_order(
    max_concurrent: int, max_queue: int, plan: list[tuple[str, int]]
) -> None:
    core: BulkheadCore[int] = BulkheadCore(max_concurrent, max_queue)
    inside: list[int] = []
    queued: list[int] = []
    next_id = 0
    for op, index in plan:
        if op == "arrive":
            next_id += 1
            if core.try_enter():
                assert not queued  # nobody overtakes the queue
                inside.append(next_id)
            elif core.enqueue(next_id):
                queued.append(next_id)
            else:
                assert len(queued) == max_queue
        elif op == "leave" and inside:
            inside.pop(index % len(inside))
            handed = core.release()
            if queued:
                assert handed == queued.pop(0)  # FIFO
                inside.append(handed)
            else:
                assert handed is None
        elif op == "give_up" and queued:
            waiter = queued.pop(index % len(queued))
            assert core.cancel(waiter)
            assert not core.cancel(waiter)
        assert core.active == len(inside) <= max_concurrent
        assert core.waiting == len(queued) <= max_queue


def test_core_rejects_bad_limits_and_extra_releases() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        BulkheadCore(0)
    core: BulkheadCore[object] = BulkheadCore(1)
    with pytest.raises(RuntimeError, match="released more"):
        core.release()


# -- sync ----------------------------------------------------------------------------------


def test_full_bulkhead_rejects_with_a_crossway_error() -> None:
    bulkhead = Bulkhead("db", max_concurrent=1)
    with bulkhead:
        with pytest.raises(BulkheadFullError) as info:
            bulkhead.acquire()
        body = info.value.to_json()["error"]
        assert body["code"] == "bulkhead_full"
        assert body["bulkhead"] == "db"
        assert info.value.status == 503
    assert bulkhead.active == 0


def test_threads_never_exceed_max_concurrent() -> None:
    bulkhead = Bulkhead(max_concurrent=3, max_queue=100)
    lock = threading.Lock()
    inside = peak = 0

    @bulkhead
    def work() -> None:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
        time.sleep(0.002)
        with lock:
            inside -= 1

    threads = [threading.Thread(target=work) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 3
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


def test_sync_wait_times_out_without_keeping_a_slot() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1, max_wait=0.01)
    bulkhead.acquire()
    with pytest.raises(BulkheadFullError, match="no free slot"):
        bulkhead.acquire()
    assert bulkhead.waiting == 0
    bulkhead.release()
    assert bulkhead.active == 0
    assert bulkhead.call(lambda: 5) == 5


def test_queued_thread_gets_the_slot_handed_over() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1)
    bulkhead.acquire()
    got = threading.Event()

    def waiter() -> None:
        with bulkhead:
            got.set()

    t = threading.Thread(target=waiter)
    t.start()
    while bulkhead.waiting == 0:
        time.sleep(0.001)
    with pytest.raises(BulkheadFullError, match="is full"):
        bulkhead.acquire()  # one waiting already fills the queue
    bulkhead.release()
    t.join(5)
    assert got.is_set()
    assert bulkhead.active == 0


# -- async ------------------------------------------------------------------------------------


async def test_tasks_never_exceed_max_concurrent() -> None:
    bulkhead = Bulkhead(max_concurrent=4, max_queue=1000)
    inside = peak = 0

    @bulkhead
    async def work() -> int:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        inside -= 1
        return 1

    assert sum(await asyncio.gather(*(work() for _ in range(50)))) == 50
    assert peak == 4
    assert (bulkhead.active, bulkhead.waiting) == (0, 0)


async def test_async_queue_full_and_wait_timeout() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=1, max_wait=0.01)
    await bulkhead.acquire_async()
    with pytest.raises(BulkheadFullError, match="no free slot"):
        await bulkhead.acquire_async()
    bulkhead.release()
    assert await bulkhead.call_async(asyncio.sleep, 0, "x") == "x"
    assert bulkhead.active == 0


async def test_cancelled_waiter_keeps_no_slot() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=5)
    await bulkhead.acquire_async()
    waiter = asyncio.create_task(bulkhead.acquire_async())
    await asyncio.sleep(0)
    assert bulkhead.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bulkhead.waiting == 0
    bulkhead.release()
    assert bulkhead.active == 0


async def test_waiter_cancelled_after_being_handed_a_slot_passes_it_on() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=5)
    await bulkhead.acquire_async()
    first = asyncio.create_task(bulkhead.acquire_async())
    second = asyncio.create_task(bulkhead.acquire_async())
    await asyncio.sleep(0)
    bulkhead.release()  # hands the slot to `first`; it wakes on the next loop turn
    first.cancel()  # ...but is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 5)  # the slot went on to the next in line
    assert bulkhead.active == 1
    bulkhead.release()
    assert bulkhead.active == 0


async def test_threads_and_tasks_share_one_bulkhead() -> None:
    bulkhead = Bulkhead(max_concurrent=1, max_queue=5)
    bulkhead.acquire()  # held by "a thread"
    task = asyncio.create_task(bulkhead.acquire_async())
    await asyncio.sleep(0)
    await asyncio.to_thread(bulkhead.release)  # released from another thread
    await asyncio.wait_for(task, 5)
    assert bulkhead.active == 1
    bulkhead.release()
    assert bulkhead.active == 0
