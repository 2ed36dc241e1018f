"""The consecutive-failure breaker: pybreaker's fail_max / reset_timeout semantics."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.resilience.classify import FailurePolicy
from crossway.resilience.consecutive import ConsecutiveBreaker
from crossway.resilience.guard import CircuitOpenError, State, StateTransition


class Boom(Exception):
    pass


def make(**kwargs: object) -> tuple[ConsecutiveBreaker, VirtualClock, list[StateTransition]]:
    clock = VirtualClock()
    breaker = ConsecutiveBreaker("dep", clock=clock, **kwargs)  # type: ignore[arg-type]
    events: list[StateTransition] = []
    breaker.add_listener(events.append)
    return breaker, clock, events


def boom() -> None:
    raise Boom


def test_opens_after_fail_max_consecutive_failures() -> None:
    breaker, _, events = make(fail_max=3)
    for _ in range(2):
        with pytest.raises(Boom):
            breaker.call(boom)
    assert breaker.call(lambda: "ok") == "ok"  # a success resets the count
    assert breaker.failures == 0
    for _ in range(3):
        with pytest.raises(Boom):
            breaker.call(boom)
    assert breaker.state is State.OPEN
    assert events[-1].reason == "3 consecutive failures"
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: "never")


def test_one_trial_call_after_the_reset_timeout() -> None:
    breaker, clock, events = make(fail_max=1, reset_timeout=30.0)
    with pytest.raises(Boom):
        breaker.call(boom)
    clock.advance(29.9)
    assert breaker.current_state() is State.OPEN
    assert breaker.retry_after() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.allow()
    assert not breaker.allow()  # pybreaker admits a single trial
    breaker.on_success()
    assert breaker.state is State.CLOSED
    assert [e.to_state for e in events] == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_failed_trial_reopens_and_restarts_the_timeout() -> None:
    breaker, clock, _ = make(fail_max=1, reset_timeout=30.0)
    breaker.allow()
    breaker.on_failure()
    clock.advance(30)
    assert breaker.current_state() is State.HALF_OPEN
    with pytest.raises(Boom):
        breaker.call(boom)
    assert breaker.state is State.OPEN
    clock.advance(29)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()


def test_success_threshold_needs_that_many_probe_successes() -> None:
    breaker, clock, _ = make(fail_max=1, reset_timeout=1.0, success_threshold=3)
    breaker.allow()
    breaker.on_failure()
    clock.advance(1)
    assert [breaker.allow() for _ in range(4)] == [True, True, True, False]
    breaker.on_success()
    breaker.on_success()
    assert breaker.state is State.HALF_OPEN
    breaker.release()  # the third probe never ran
    assert breaker.allow()
    breaker.on_success()
    assert breaker.state is State.CLOSED


def test_excluded_exceptions_do_not_count() -> None:
    breaker, _, _ = make(fail_max=2, policy=FailurePolicy(ignore_exceptions=(KeyError,)))
    for _ in range(5):
        with pytest.raises(KeyError):
            breaker.call(lambda: {}["missing"])
    assert breaker.state is State.CLOSED
    assert breaker.failures == 0


def test_result_predicate_counts_failures() -> None:
    breaker, _, _ = make(fail_max=2, policy=FailurePolicy(failure_statuses={500}))
    assert breaker.call(lambda: 500) == 500
    assert breaker.call(lambda: 500) == 500
    assert breaker.state is State.OPEN


def test_operator_controls() -> None:
    breaker, _, _ = make(fail_max=1)
    breaker.force_open()
    assert not breaker.allow()
    assert breaker.retry_after() is None
    breaker.disable()
    for _ in range(5):
        with pytest.raises(Boom):
            breaker.call(boom)
    assert breaker.state is State.DISABLED
    breaker.reset()
    assert breaker.state is State.CLOSED


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fail_max"):
        ConsecutiveBreaker(fail_max=0)
    with pytest.raises(ValueError, match="reset_timeout"):
        ConsecutiveBreaker(reset_timeout=-1)


async def test_async_paths() -> None:
    breaker, clock, _ = make(fail_max=2, reset_timeout=5)

    @breaker
    async def work(fail: bool) -> str:
        await asyncio.sleep(0)
        if fail:
            raise Boom
        return "ok"

    assert await work(False) == "ok"
    with pytest.raises(Boom):
        await work(True)
    with pytest.raises(Boom):
        async with breaker:
            raise Boom
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        await breaker.call_async(work, False)
    clock.advance(5)
    assert await work(False) == "ok"
    assert breaker.state is State.CLOSED


async def test_cancelled_trial_gives_the_slot_back() -> None:
    breaker, clock, _ = make(fail_max=1, reset_timeout=1)
    breaker.allow()
    breaker.on_failure()
    clock.advance(1)

    @breaker
    async def hang() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await asyncio.sleep(0)
    assert not breaker.allow()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.allow()


def test_sync_decorator_and_with_block() -> None:
    breaker, _, _ = make(fail_max=2)

    @breaker
    def ok() -> int:
        return 1

    assert ok() == 1
    with pytest.raises(Boom), breaker:
        raise Boom
    with breaker:
        pass
    assert breaker.failures == 0


def test_threads_are_not_serialised() -> None:
    breaker = ConsecutiveBreaker("threads")
    n = 8
    barrier = threading.Barrier(n, timeout=10)

    @breaker
    def meet() -> int:
        return barrier.wait()

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(meet())) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(n))


def test_sleeping_threads_overlap() -> None:
    breaker = ConsecutiveBreaker("sleepers")
    n, nap = 8, 0.05

    @breaker
    def sleepy() -> None:
        time.sleep(nap)

    threads = [threading.Thread(target=sleepy) for _ in range(n)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - began < n * nap / 2


ops = st.lists(
    st.tuples(
        st.sampled_from(["allow"] * 3 + ["on_failure"] * 2 + ["on_success", "release", "advance"]),
        st.sampled_from([0.5, 5.0, 10.0]),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), ops)
def test_never_more_trial_calls_than_the_success_threshold(
    fail_max: int, threshold: int, steps: list[tuple[str, float]]
) -> None:
    breaker, clock, _ = make(fail_max=fail_max, reset_timeout=5.0, success_threshold=threshold)
    episode = {"n": 0, "admitted": 0, "released": 0, "reported": 0}

    def on_transition(event: StateTransition) -> None:
        episode.update(n=episode["n"] + 1, admitted=0, released=0, reported=0)

    breaker.add_listener(on_transition)
    for op, value in steps:
        if op == "advance":
            clock.advance(value)
        elif op == "allow":
            if breaker.allow() and breaker.state is State.HALF_OPEN:
                episode["admitted"] += 1
        else:
            held = episode["admitted"] - episode["released"] - episode["reported"]
            half_open, number = breaker.state is State.HALF_OPEN, episode["n"]
            getattr(breaker, op)()
            if half_open and held > 0 and episode["n"] == number:
                episode["released" if op == "release" else "reported"] += 1
        assert episode["admitted"] - episode["released"] <= threshold
