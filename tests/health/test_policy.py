"""The pure health policy on a VirtualClock: jitter, schedules, flapping, deregistration."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.core.errors import InvalidArgument
from crossway.health.policy import (
    CheckTiming,
    Schedule,
    StatusMachine,
    Thresholds,
    first_delay,
    jittered,
    wake_at,
)
from crossway.registry import Check
from crossway.registry.model import Status

intervals = st.floats(min_value=0.1, max_value=3600.0)
seeds = st.integers(min_value=0, max_value=2**32)
results = st.sampled_from(["passing", "warning", "critical"])


@given(intervals, seeds)
def test_jitter_and_first_delay_bounds(interval: float, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20):
        assert 0.9 * interval <= jittered(interval, rng) <= 1.1 * interval
        assert 0.0 <= first_delay(interval, rng) <= min(interval, 1.0)


@given(intervals, seeds, st.lists(st.floats(min_value=0.0, max_value=5.0), max_size=30))
def test_schedule_spacing_on_a_virtual_clock(
    interval: float, seed: int, probe_times: list[float]
) -> None:
    clock = VirtualClock(start=100.0)
    schedule = Schedule(interval, random.Random(seed), now=clock.now())
    assert 100.0 <= schedule.next_due <= 100.0 + min(interval, 1.0)
    for took in probe_times:
        clock.set(max(clock.now(), schedule.next_due))
        assert schedule.due(clock.now())
        clock.advance(took)  # the probe runs; the interval counts from its end
        schedule.ran(clock.now())
        assert not schedule.due(clock.now())
        gap = schedule.next_due - clock.now()
        assert 0.9 * interval <= gap <= 1.1 * interval


def test_many_instances_drift_apart() -> None:
    # 200 instances registered in the same instant end up spread across the interval.
    rng = random.Random(7)
    schedules = [Schedule(10.0, rng, now=0.0) for _ in range(200)]
    for _ in range(50):
        for schedule in schedules:
            schedule.ran(schedule.next_due)
    phases = sorted(s.next_due % 10.0 for s in schedules)
    buckets = {int(p) for p in phases}
    assert len(buckets) == 10, "every tenth of the interval has probes in it"


def machine(
    spb: int = 1,
    fbc: int = 1,
    *,
    status: Status = "critical",
    output: str = "waiting for the first check",
    deregister_after: float | None = None,
    now: float = 0.0,
    critical_for: float = 0.0,
) -> StatusMachine:
    return StatusMachine(
        Thresholds(spb, fbc),
        deregister_after=deregister_after,
        status=status,
        output=output,
        now=now,
        critical_for=critical_for,
    )


def test_default_thresholds_record_every_change_once() -> None:
    m = machine()
    verdict = m.observe("passing", "HTTP 200 OK")
    assert verdict is not None
    assert verdict.transition
    assert verdict.status == "passing"
    assert m.status == "critical", "observe never changes the recorded status"
    m.record("passing", "HTTP 200 OK", now=1.0)
    assert m.observe("passing", "HTTP 200 OK") is None, "unchanged: no write"
    verdict = m.observe("warning", "HTTP 429 Too Many Requests")
    assert verdict is not None
    assert verdict.status == "warning"
    m.record("warning", "HTTP 429 Too Many Requests", now=2.0)
    only_output = m.observe("warning", "HTTP 429 Slow Down")
    assert only_output is not None
    assert not only_output.transition


def test_flapping_guard_needs_consecutive_results() -> None:
    m = machine(3, 2, status="passing", output="HTTP 200 OK")
    assert m.observe("critical", "connect refused") is None
    assert m.observe("passing", "HTTP 200 OK") is None, "a success resets the failure streak"
    assert m.observe("critical", "connect refused") is None
    verdict = m.observe("critical", "connect refused")
    assert verdict is not None
    assert verdict.status == "critical"
    m.record("critical", "connect refused", now=0.0)
    assert m.observe("passing", "HTTP 200 OK") is None
    assert m.observe("passing", "HTTP 200 OK") is None
    assert m.observe("passing", "HTTP 200 OK") is not None


def test_a_failed_write_is_asked_for_again() -> None:
    m = machine(1, 1, status="passing", output="HTTP 200 OK")
    first = m.observe("critical", "connect refused")
    again = m.observe("critical", "connect refused")
    assert again is not None
    assert first == again, "nothing recorded, so the write is repeated"


@given(
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=4),
    st.lists(results, max_size=60),
)
def test_writes_only_after_full_streaks(spb: int, fbc: int, seq: list[Status]) -> None:
    m = machine(spb, fbc)
    streak_ok = streak_bad = 0
    for status in seq:
        streak_ok, streak_bad = (streak_ok + 1, 0) if status == "passing" else (0, streak_bad + 1)
        verdict = m.observe(status, status)
        if verdict is None:
            continue
        if verdict.status == "passing":
            assert streak_ok >= spb
        else:
            assert streak_bad >= fbc
        assert (verdict.status, verdict.output) != (m.status, m.output)
        m.record(verdict.status, verdict.output, now=0.0)
    tail = seq[-max(spb, fbc) :]
    if len(seq) >= max(spb, fbc) and len(set(tail)) == 1:
        assert m.status == tail[0], "a long enough run of one result is always recorded"


@given(
    st.floats(min_value=1.0, max_value=100.0),
    st.lists(st.tuples(st.floats(min_value=0.0, max_value=30.0), results), max_size=40),
)
def test_deregister_after_continuous_critical(
    after: float, steps: list[tuple[float, Status]]
) -> None:
    clock = VirtualClock()
    m = machine(deregister_after=after, status="passing", output="")
    critical_since: float | None = None
    for advance, status in steps:
        clock.advance(advance)
        verdict = m.observe(status, status)
        if verdict is not None:
            m.record(verdict.status, verdict.output, now=clock.now())
            if verdict.status != "critical":
                critical_since = None
            elif critical_since is None:
                critical_since = clock.now()
        # The deadline is a point in time: compare against it as the policy does,
        # so float rounding at the boundary agrees.
        expected = critical_since is not None and clock.now() >= critical_since + after
        assert m.deregister_due(clock.now()) == expected
        if critical_since is not None:
            assert m.deregister_at == pytest.approx(critical_since + after)


def test_critical_streak_recovered_from_status_since() -> None:
    m = machine(deregister_after=60.0, now=1000.0, critical_for=50.0)
    assert m.deregister_at == 1010.0
    assert not m.deregister_due(1009.9)
    assert m.deregister_due(1010.0)
    m.record("critical", "connect refused", now=1005.0, critical_for=0.0)
    assert m.deregister_at == 1010.0, "staying critical keeps the streak"
    m.record("passing", "HTTP 200 OK", now=1006.0)
    assert m.deregister_at is None
    assert not m.deregister_due(2000.0)


def test_no_deregistration_without_deregister_after() -> None:
    m = machine(now=0.0, critical_for=1e9)
    assert m.deregister_at is None
    assert not m.deregister_due(1e12)


def test_wake_at_is_the_earlier_of_probe_and_deadline() -> None:
    rng = random.Random(1)
    schedule = Schedule(30.0, rng, now=0.0)
    schedule.ran(0.0)
    m = machine(deregister_after=5.0, now=0.0)
    assert wake_at(schedule, m) == 5.0
    m.record("passing", "", now=1.0)
    assert wake_at(schedule, m) == schedule.next_due


def test_thresholds_and_timing() -> None:
    with pytest.raises(InvalidArgument):
        Thresholds(0, 1)
    with pytest.raises(InvalidArgument):
        Thresholds(1, 0)
    timing = CheckTiming.of(Check(tcp="127.0.0.1:1", interval="250ms", timeout="1s"))
    assert timing == CheckTiming(0.25, 1.0, None)
    assert CheckTiming.of(Check(tcp="h:1", deregister_after="1m")).deregister_after == 60.0
