"""The failure-rate / slow-call breaker: resilience4j's state machine on virtual time."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.resilience.breaker import (
    BreakerConfig,
    CircuitBreaker,
    CircuitOpenError,
    Permit,
    State,
    StateTransition,
    WindowType,
)


def small(**overrides: object) -> BreakerConfig:
    values: dict[str, object] = {
        "sliding_window_size": 10,
        "minimum_number_of_calls": 5,
        "permitted_number_of_calls_in_half_open_state": 3,
        "wait_duration_in_open_state": 10.0,
        "slow_call_duration_threshold": 1.0,
    }
    values.update(overrides)
    return BreakerConfig(**values)  # type: ignore[arg-type]


def make(**overrides: object) -> tuple[CircuitBreaker, VirtualClock, list[StateTransition]]:
    clock = VirtualClock()
    breaker = CircuitBreaker("svc", small(**overrides), clock=clock)
    events: list[StateTransition] = []
    breaker.add_listener(events.append)
    return breaker, clock, events


def trip(breaker: CircuitBreaker, clock: VirtualClock) -> None:
    while breaker.state is not State.OPEN:
        assert breaker.allow()
        breaker.on_failure(0.01)


# -- configuration ---------------------------------------------------------------------


def test_defaults_follow_resilience4j() -> None:
    cfg = BreakerConfig()
    assert cfg.failure_rate_threshold == 50
    assert cfg.slow_call_rate_threshold == 100
    assert cfg.slow_call_duration_threshold == 60.0
    assert cfg.permitted_number_of_calls_in_half_open_state == 10
    assert cfg.max_wait_duration_in_half_open_state == 0
    assert cfg.sliding_window_type is WindowType.COUNT_BASED
    assert cfg.sliding_window_size == 100
    assert cfg.minimum_number_of_calls == 100
    assert cfg.wait_duration_in_open_state == 60.0
    assert cfg.automatic_transition_from_open_to_half_open_enabled is False


def test_config_from_mapping_parses_durations_and_names() -> None:
    cfg = BreakerConfig.from_mapping(
        {
            "wait_duration_in_open_state": "30s",
            "slow_call_duration_threshold": "500ms",
            "sliding_window_type": "TIME_BASED",
            "failure_statuses": [502, 503],
        }
    )
    assert cfg.wait_duration_in_open_state == 30.0
    assert cfg.slow_call_duration_threshold == 0.5
    assert cfg.sliding_window_type is WindowType.TIME_BASED
    assert cfg.failure_statuses == frozenset({502, 503})


@pytest.mark.parametrize(
    "bad",
    [
        {"failure_rate_threshold": 0},
        {"slow_call_rate_threshold": 101},
        {"sliding_window_size": 0},
        {"permitted_number_of_calls_in_half_open_state": 0},
        {"wait_duration_in_open_state": -1.0},
        {"consecutive_failure_threshold": -1},
    ],
)
def test_config_rejects_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the field
        BreakerConfig(**bad)  # type: ignore[arg-type]


# -- tripping -----------------------------------------------------------------------------


def test_no_trip_below_minimum_number_of_calls() -> None:
    breaker, _, _ = make()
    for _ in range(4):
        assert breaker.allow()
        breaker.on_failure(0.01)
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().failures == 4


def test_trips_when_failure_rate_reaches_threshold() -> None:
    breaker, _, events = make()
    for ok in (True, True, False, False):
        assert breaker.allow()
        (breaker.on_success if ok else breaker.on_failure)(0.01)
    assert breaker.state is State.CLOSED
    assert breaker.allow()
    breaker.on_failure(0.01)  # 3 of 5 = 60 % >= 50 %
    assert breaker.state is State.OPEN
    assert [(e.from_state, e.to_state) for e in events] == [(State.CLOSED, State.OPEN)]
    assert "rate" in events[0].reason
    assert not breaker.allow()


def test_the_success_that_reaches_the_minimum_still_trips() -> None:
    breaker, _, _ = make()
    for _ in range(4):
        breaker.allow()
        breaker.on_failure(0.01)
    breaker.allow()
    breaker.on_success(0.01)  # 4 of 5 failed
    assert breaker.state is State.OPEN


def test_trips_on_slow_call_rate() -> None:
    breaker, _, _ = make(slow_call_rate_threshold=60.0)
    for _ in range(2):
        breaker.allow()
        breaker.on_success(0.1)
    for _ in range(3):
        breaker.allow()
        breaker.on_success(2.0)  # slow, though successful
    assert breaker.state is State.OPEN
    snap = breaker.snapshot()  # OPEN keeps the window that tripped it, for inspection
    assert (snap.calls, snap.slow_calls, snap.slow_call_rate) == (5, 3, 60.0)


def test_old_failures_slide_out_of_a_count_window() -> None:
    breaker, _, _ = make(sliding_window_size=5)
    for _ in range(2):
        breaker.allow()
        breaker.on_failure(0.01)
    for _ in range(20):
        breaker.allow()
        breaker.on_success(0.01)
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (5, 0)
    assert breaker.state is State.CLOSED


def test_time_based_window_forgets_old_failures() -> None:
    breaker, clock, _ = make(sliding_window_type=WindowType.TIME_BASED, sliding_window_size=10)
    for _ in range(4):
        breaker.allow()
        breaker.on_failure(0.01)
    clock.advance(11.0)
    breaker.allow()
    breaker.on_failure(0.01)  # the first four slid out: 1 call, below the minimum
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().calls == 1
    for _ in range(4):
        breaker.allow()
        breaker.on_success(0.01)
    breaker.allow()
    breaker.on_failure(0.01)
    assert breaker.state is State.CLOSED  # 2 of 6
    for _ in range(4):
        breaker.allow()
        breaker.on_failure(0.01)
    assert breaker.state is State.OPEN


def test_consecutive_failures_trip_regardless_of_the_minimum() -> None:
    breaker, _, events = make(consecutive_failure_threshold=3, minimum_number_of_calls=100)
    for ok in (False, False, True, False, False):
        breaker.allow()
        (breaker.on_success if ok else breaker.on_failure)(0.01)
    assert breaker.state is State.CLOSED
    breaker.allow()
    breaker.on_failure(0.01)
    assert breaker.state is State.OPEN
    assert events[-1].reason == "3 consecutive failures"


# -- open and half-open ----------------------------------------------------------------


def test_open_waits_then_admits_exactly_the_permitted_probes() -> None:
    breaker, clock, _ = make()
    trip(breaker, clock)
    clock.advance(9.99)
    assert not breaker.allow()
    assert breaker.retry_after() == pytest.approx(0.01)
    clock.advance(0.01)
    assert [breaker.allow() for _ in range(5)] == [True, True, True, False, False]
    assert breaker.state is State.HALF_OPEN
    assert breaker.retry_after() == 0.0


def test_probes_succeeding_close_the_circuit() -> None:
    breaker, clock, events = make()
    trip(breaker, clock)
    clock.advance(10)
    for _ in range(3):
        assert breaker.allow()
    breaker.on_success(0.01)
    breaker.on_failure(0.01)
    assert breaker.state is State.HALF_OPEN
    breaker.on_success(0.01)  # 1 of 3 failed: 33 % < 50 %
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().calls == 0
    assert [e.to_state for e in events] == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_probes_failing_reopen_the_circuit() -> None:
    breaker, clock, _ = make()
    trip(breaker, clock)
    clock.advance(10)
    for _ in range(3):
        breaker.allow()
    for ok in (False, False, True):
        (breaker.on_success if ok else breaker.on_failure)(0.01)
    assert breaker.state is State.OPEN
    assert not breaker.allow()
    clock.advance(10)
    assert breaker.allow()


def test_slow_probes_reopen_the_circuit() -> None:
    breaker, clock, _ = make(slow_call_rate_threshold=50.0)
    trip(breaker, clock)
    clock.advance(10)
    for _ in range(3):
        breaker.allow()
    for duration in (2.0, 2.0, 0.1):
        breaker.on_success(duration)
    assert breaker.state is State.OPEN


def test_released_probe_gives_its_slot_back() -> None:
    breaker, clock, _ = make()
    trip(breaker, clock)
    clock.advance(10)
    permits = [breaker.acquire() for _ in range(3)]
    assert all(p is not None for p in permits)
    assert breaker.acquire() is None
    assert permits[0] is not None
    permits[0].release()
    permits[0].release()  # a second report is ignored
    replacement = breaker.acquire()
    assert replacement is not None
    assert breaker.acquire() is None


def test_results_from_before_a_transition_are_dropped() -> None:
    breaker, clock, _ = make()
    early = breaker.acquire()
    assert early is not None
    trip(breaker, clock)
    clock.advance(10)
    probes = [breaker.acquire() for _ in range(3)]
    early.success(0.01)  # admitted while CLOSED: not a probe
    early.failure(0.01)
    assert breaker.state is State.HALF_OPEN
    assert breaker.snapshot().calls == 0
    for probe in probes:
        assert probe is not None
        probe.success()
    assert breaker.state is State.CLOSED


def test_unsolicited_half_open_results_are_ignored() -> None:
    breaker, clock, _ = make()
    trip(breaker, clock)
    clock.advance(10)
    assert breaker.allow()
    for _ in range(5):
        breaker.on_failure(0.01)  # only one probe is outstanding
    assert breaker.state is State.HALF_OPEN
    assert breaker.snapshot().failures == 1


def test_release_without_a_held_probe_frees_nothing() -> None:
    breaker, clock, _ = make()
    trip(breaker, clock)
    clock.advance(10)
    assert breaker.allow()
    breaker.on_success(0.01)  # that probe has reported
    breaker.release()  # nothing is held: must not open a fourth slot
    assert [breaker.allow() for _ in range(3)] == [True, True, False]


def test_half_open_max_wait_reopens() -> None:
    breaker, clock, events = make(max_wait_duration_in_half_open_state=5.0)
    trip(breaker, clock)
    clock.advance(10)
    assert breaker.allow()
    clock.advance(5)
    assert not breaker.allow()
    assert breaker.state is State.OPEN
    assert events[-1].reason == "half-open probes did not complete in time"


def test_automatic_transition_is_seen_without_a_call() -> None:
    breaker, clock, _ = make(automatic_transition_from_open_to_half_open_enabled=True)
    trip(breaker, clock)
    clock.advance(10)
    assert breaker.current_state() is State.HALF_OPEN
    manual, clock2, _ = make()
    trip(manual, clock2)
    clock2.advance(10)
    assert manual.current_state() is State.OPEN  # resilience4j: only a call moves it


def test_permit_duration_defaults_to_time_since_admission() -> None:
    breaker, clock, _ = make(slow_call_rate_threshold=50.0)
    for _ in range(5):
        permit = breaker.acquire()
        assert permit is not None
        clock.advance(1.5)
        permit.success()
    assert breaker.state is State.OPEN


# -- operator controls and listeners ------------------------------------------------------


def test_force_open_disable_metrics_only_and_reset() -> None:
    breaker, clock, events = make()
    breaker.force_open()
    assert not breaker.allow()
    assert breaker.retry_after() is None
    clock.advance(1000)
    assert not breaker.allow()
    breaker.disable()
    for _ in range(50):
        assert breaker.allow()
        breaker.on_failure(0.01)
    assert breaker.state is State.DISABLED
    breaker.metrics_only()
    for _ in range(50):
        assert breaker.allow()
        breaker.on_failure(0.01)
    assert breaker.state is State.METRICS_ONLY
    assert breaker.snapshot().failures == 10
    breaker.reset()
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().calls == 0
    assert [e.to_state for e in events] == [
        State.FORCED_OPEN,
        State.DISABLED,
        State.METRICS_ONLY,
        State.CLOSED,
    ]


def test_listener_may_call_back_and_a_broken_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker, clock, events = make()
    seen: list[State] = []

    def reentrant(event: StateTransition) -> None:
        seen.append(breaker.current_state())  # must not deadlock

    def broken(event: StateTransition) -> None:
        raise RuntimeError("boom")

    breaker.add_listener(reentrant)
    breaker.add_listener(broken)
    with caplog.at_level(logging.ERROR, logger="crossway.resilience"):
        trip(breaker, clock)
    assert seen == [State.OPEN]
    assert "state listener failed" in caplog.text
    breaker.remove_listener(broken)
    breaker.remove_listener(reentrant)
    breaker.reset()
    assert seen == [State.OPEN]
    assert events[-1].to_state is State.CLOSED


def test_open_error_is_a_crossway_error_with_retry_after() -> None:
    breaker, clock, _ = make()
    trip(breaker, clock)
    clock.advance(4)

    @breaker
    def call() -> int:
        return 1

    with pytest.raises(CircuitOpenError) as info:
        call()
    body = info.value.to_json()["error"]
    assert body["code"] == "circuit_open"
    assert body["breaker"] == "svc"
    assert body["retry_after"] == pytest.approx(6.0)
    assert info.value.status == 503


def test_latency_percentiles_when_enabled() -> None:
    breaker, _, _ = make(latency_histogram=True, sliding_window_size=100)
    for ms in range(1, 101):
        breaker.allow()
        breaker.on_success(ms / 1000)
    assert 0.099 <= breaker.latency_percentile(0.99) <= 0.13
    plain, _, _ = make()
    with pytest.raises(ValueError, match="latenc"):
        plain.latency_percentile(0.5)


# -- classification through the wrappers ---------------------------------------------------


class Transient(Exception):
    pass


class Invalid(Exception):
    pass


@dataclass
class Response:
    status_code: int


def test_ignored_exceptions_release_and_unrecorded_ones_count_as_success() -> None:
    breaker, _, _ = make(
        record_exceptions=(Transient,),
        ignore_exceptions=(Invalid,),
        failure_statuses=frozenset({503}),
    )

    @breaker
    def call(exc: Exception | None, status: int = 200) -> Response:
        if exc is not None:
            raise exc
        return Response(status)

    for exc in (Invalid(), ValueError(), Invalid(), ValueError()):
        with pytest.raises(type(exc)):
            call(exc)
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (2, 0)  # the ValueErrors count as successes
    call(None, 503)
    with pytest.raises(Transient):
        call(Transient())
    assert breaker.snapshot().failures == 2
    call(None, 503)
    assert breaker.state is State.OPEN  # 3 of 5


def test_record_failure_predicate_and_result_predicate() -> None:
    breaker, _, _ = make(
        record_failure=lambda exc: "fatal" in str(exc),
        record_result=lambda value: value is None,
    )
    with pytest.raises(RuntimeError):
        breaker.call(_raise, RuntimeError("mild"))
    with pytest.raises(RuntimeError):
        breaker.call(_raise, RuntimeError("fatal"))
    assert breaker.call(lambda: None) is None
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (3, 2)


def _raise(exc: BaseException) -> None:
    raise exc


def test_keyboard_interrupt_releases_a_probe_and_propagates() -> None:
    breaker, clock, _ = make(permitted_number_of_calls_in_half_open_state=1)
    trip(breaker, clock)
    clock.advance(10)
    with pytest.raises(KeyboardInterrupt):
        breaker.call(_raise, KeyboardInterrupt())
    assert breaker.state is State.HALF_OPEN
    assert breaker.call(lambda: 7) == 7  # the slot came back
    assert breaker.state is State.CLOSED


def test_slow_calls_measured_by_the_wrapper() -> None:
    breaker, clock, _ = make(slow_call_rate_threshold=50.0)

    @breaker
    def slow() -> None:
        clock.advance(2.0)

    for _ in range(5):
        slow()
    assert breaker.state is State.OPEN


def test_with_block_records_outcome_and_rejects_when_open() -> None:
    breaker, _, _ = make()
    with breaker:
        pass
    for _ in range(4):
        with pytest.raises(Transient), breaker:
            raise Transient
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError), breaker:
        pytest.fail("must not run")


def test_nested_blocks_of_two_breakers() -> None:
    outer, _, _ = make()
    inner, _, _ = make()
    with outer, pytest.raises(Transient), inner:
        raise Transient
    assert outer.snapshot().failures == 0
    assert inner.snapshot().failures == 1


def test_exit_without_enter_is_an_error() -> None:
    breaker, _, _ = make()
    with pytest.raises(RuntimeError, match="context"):
        breaker.__exit__(None, None, None)


async def test_async_decorator_context_manager_and_call() -> None:
    breaker, _, _ = make()

    @breaker
    async def ok() -> int:
        await asyncio.sleep(0)
        return 1

    async def fail() -> None:
        raise Transient

    assert await ok() == 1
    async with breaker:
        await asyncio.sleep(0)
    for _ in range(2):
        with pytest.raises(Transient):
            await breaker.call_async(fail)
    assert breaker.snapshot().failures == 2
    with pytest.raises(Transient):
        async with breaker:
            raise Transient
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError):
        await ok()


async def test_cancelled_async_probe_releases_its_slot() -> None:
    breaker, clock, _ = make(permitted_number_of_calls_in_half_open_state=1)
    trip(breaker, clock)
    clock.advance(10)
    started = asyncio.Event()

    @breaker
    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await started.wait()
    assert not breaker.allow()  # the single probe is out
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is State.HALF_OPEN
    assert breaker.allow()


async def test_async_with_blocks_in_concurrent_tasks_keep_their_own_tokens() -> None:
    breaker, _, _ = make(sliding_window_size=100, minimum_number_of_calls=100)
    gate = asyncio.Event()

    async def one(fail: bool) -> None:
        async with breaker:
            await gate.wait()
            if fail:
                raise Transient

    tasks = [asyncio.create_task(one(i % 2 == 0)) for i in range(10)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (10, 5)


# -- concurrency -------------------------------------------------------------------------


def test_threads_run_the_protected_call_concurrently() -> None:
    breaker = CircuitBreaker("threads")
    n = 8
    barrier = threading.Barrier(n, timeout=10)

    @breaker
    def meet() -> int:
        return barrier.wait()  # only returns once all n threads are inside at once

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(meet())) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(n))
    assert breaker.snapshot().calls == n


def test_sleeping_threads_overlap_inside_the_breaker() -> None:
    breaker = CircuitBreaker("sleepers")
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
    elapsed = time.perf_counter() - began
    assert elapsed < n * nap / 2  # serialised callers would need n * nap
    assert breaker.snapshot().calls == n


def test_many_threads_keep_the_counts_exact() -> None:
    breaker = CircuitBreaker(
        "counts", small(sliding_window_size=10_000, minimum_number_of_calls=10_000)
    )

    def hammer(fail: bool) -> None:
        for _ in range(500):
            breaker.allow()
            (breaker.on_failure if fail else breaker.on_success)(0.001)

    threads = [threading.Thread(target=hammer, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (4000, 2000)


# -- the half-open invariant under any interleaving ------------------------------------------


@dataclass
class Episode:
    """What a half-open episode has admitted, as seen from outside the breaker."""

    number: int = 0
    admitted: int = 0
    released: int = 0
    reported: int = 0

    def on_transition(self, event: StateTransition) -> None:
        self.number += 1
        self.admitted = self.released = self.reported = 0

    @property
    def holding(self) -> int:
        return self.admitted - self.released - self.reported


def prop_breaker(
    limit: int, max_wait: float, consecutive: int
) -> tuple[CircuitBreaker, VirtualClock]:
    clock = VirtualClock()
    config = small(
        sliding_window_size=4,
        minimum_number_of_calls=2,
        permitted_number_of_calls_in_half_open_state=limit,
        max_wait_duration_in_half_open_state=max_wait,
        consecutive_failure_threshold=consecutive,
    )
    return CircuitBreaker("prop", config, clock=clock), clock


permit_ops = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.just(0), st.just(0.0)),
        st.tuples(
            st.sampled_from(["success", "failure", "failure", "release"]),
            st.integers(0, 30),
            st.sampled_from([0.1, 2.0]),
        ),
        st.tuples(st.just("advance"), st.just(0), st.sampled_from([1.0, 5.0, 10.0, 20.0])),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.sampled_from([0.0, 7.0]), st.integers(0, 3), permit_ops)
def test_never_more_half_open_probes_than_permitted_with_permits(
    limit: int, max_wait: float, consecutive: int, ops: list[tuple[str, int, float]]
) -> None:
    breaker, clock = prop_breaker(limit, max_wait, consecutive)
    episode = Episode()
    breaker.add_listener(episode.on_transition)
    outstanding: list[tuple[Permit, int]] = []
    for op, index, value in ops:
        if op == "advance":
            clock.advance(value)
        elif op == "acquire":
            permit = breaker.acquire()
            if permit is not None:
                if breaker.state is State.HALF_OPEN:
                    episode.admitted += 1
                outstanding.append((permit, episode.number))
        elif outstanding:
            permit, number = outstanding.pop(index % len(outstanding))
            if number == episode.number and breaker.state is State.HALF_OPEN and op == "release":
                episode.released += 1
            if op == "release":
                permit.release()
            else:
                getattr(permit, op)(value)
        in_flight = sum(1 for _, n in outstanding if n == episode.number)
        assert episode.admitted - episode.released <= limit
        if breaker.state is State.HALF_OPEN:
            assert in_flight <= limit


# Weighted so that short runs trip, wait out the open state and probe often.
bool_ops = st.lists(
    st.tuples(
        st.sampled_from(["allow"] * 3 + ["on_failure"] * 2 + ["on_success", "release", "advance"]),
        st.sampled_from([0.1, 2.0, 5.0, 10.0, 20.0]),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 4), st.sampled_from([0.0, 7.0]), bool_ops)
def test_never_more_half_open_probes_than_permitted_with_allow(
    limit: int, max_wait: float, ops: list[tuple[str, float]]
) -> None:
    breaker, clock = prop_breaker(limit, max_wait, 0)
    episode = Episode()
    breaker.add_listener(episode.on_transition)
    for op, value in ops:
        if op == "advance":
            clock.advance(value)
        elif op == "allow":
            if breaker.allow() and breaker.state is State.HALF_OPEN:
                episode.admitted += 1
        else:
            half_open, number, holding = (
                breaker.state is State.HALF_OPEN,
                episode.number,
                episode.holding,
            )
            if op == "release":
                breaker.release()
            else:
                getattr(breaker, op)(value / 4)
            # A caller can only give back or report a probe it holds.
            if half_open and holding > 0 and episode.number == number:
                if op == "release":
                    episode.released += 1
                else:
                    episode.reported += 1
        assert episode.admitted - episode.released <= limit
