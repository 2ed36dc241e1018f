"""Deadlines travel with the call, only shrink, and cross processes as grpc-timeout."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.resilience.deadline import (
    Deadline,
    DeadlineExceeded,
    attempt_timeout,
    current_deadline,
    deadline_scope,
    format_grpc_timeout,
    parse_grpc_timeout,
    remaining_time,
)


def test_no_deadline_by_default() -> None:
    assert current_deadline() is None
    assert remaining_time() is None
    assert remaining_time(5.0) == 5.0
    assert attempt_timeout() is None
    assert attempt_timeout(2.0) == 2.0


def test_deadline_basics_on_a_virtual_clock() -> None:
    clock = VirtualClock(100.0)
    d = Deadline.after(3.0, clock=clock)
    assert d.at == 103.0
    assert d.remaining() == 3.0
    clock.advance(2.5)
    assert d.remaining() == 0.5
    assert not d.expired()
    d.check()
    clock.advance(1.0)
    assert d.remaining() == 0.0
    assert d.expired()
    with pytest.raises(DeadlineExceeded):
        d.check()
    assert "remaining" in repr(d)
    with pytest.raises(ValueError, match="negative"):
        Deadline.after(-1, clock=clock)


def test_deadline_exceeded_is_a_timeout_and_a_crossway_error() -> None:
    err = DeadlineExceeded("late")
    assert isinstance(err, TimeoutError)
    assert err.to_json() == {"error": {"code": "deadline_exceeded", "message": "late"}}
    assert err.status == 504


@given(st.lists(st.floats(min_value=0.001, max_value=100.0), min_size=1, max_size=8))
def test_nested_scopes_only_shrink_and_restore_on_exit(timeouts: list[float]) -> None:
    clock = VirtualClock()
    with contextlib.ExitStack() as stack:
        previous = float("inf")
        for timeout in timeouts:
            d = stack.enter_context(deadline_scope(timeout, clock=clock))
            assert current_deadline() is d
            assert d.remaining() <= previous
            assert d.remaining() == min(previous, timeout)
            previous = d.remaining()
            clock.advance(0.0)
    assert current_deadline() is None


def test_time_passing_shrinks_the_remaining_time() -> None:
    clock = VirtualClock()
    with deadline_scope(10.0, clock=clock):
        assert remaining_time() == 10.0
        clock.advance(4.0)
        assert remaining_time() == 6.0
        with deadline_scope(60.0, clock=clock) as inner:
            assert inner.remaining() == 6.0  # a longer timeout cannot extend the deadline
        assert attempt_timeout(2.0) == 2.0
        assert attempt_timeout(20.0) == 6.0
        assert attempt_timeout(reserve=1.5) == 4.5
        clock.advance(10.0)
        assert attempt_timeout(2.0) == 0.0


def test_entering_an_expired_deadline_fails_at_once() -> None:
    clock = VirtualClock()
    d = Deadline.after(1.0, clock=clock)
    clock.advance(2.0)
    ran = False
    with pytest.raises(DeadlineExceeded), deadline_scope(deadline=d):
        ran = True
    assert not ran
    assert current_deadline() is None


def test_scope_arguments() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        deadline_scope()
    with pytest.raises(ValueError, match="exactly one"):
        deadline_scope(1.0, deadline=Deadline.after(1.0))
    scope = deadline_scope(5.0)
    with scope:
        pass
    with pytest.raises(RuntimeError, match="once"), scope:
        pass


async def test_async_scope_cancels_the_body_at_the_deadline() -> None:
    with pytest.raises(DeadlineExceeded) as info:
        async with deadline_scope(0.01):
            await asyncio.sleep(3600)
    assert isinstance(info.value.__cause__, TimeoutError)
    assert current_deadline() is None


async def test_async_scope_lets_outside_cancellation_through() -> None:
    started = asyncio.Event()

    async def body() -> None:
        async with deadline_scope(3600):
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_deadline_follows_into_spawned_tasks() -> None:
    async def child() -> float | None:
        return remaining_time()

    async with deadline_scope(30.0):
        left = await asyncio.create_task(child())
    assert left is not None
    assert 0 < left <= 30.0
    assert await asyncio.create_task(child()) is None


# -- grpc-timeout ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "header"),
    [
        (0.0, "0n"),
        (-1.0, "0n"),
        (1e-9, "1n"),
        (0.1, "100000u"),
        (2.5, "2500000u"),
        (100.0, "100000m"),
        (1e6, "1000000S"),
        (1e9, "16666667M"),
        (1e10, "2777778H"),
        (1e20, "99999999H"),
    ],
)
def test_format_grpc_timeout(seconds: float, header: str) -> None:
    assert format_grpc_timeout(seconds) == header


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("250m", 0.25),
        ("3S", 3.0),
        ("1M", 60.0),
        ("2H", 7200.0),
        ("5u", 5e-6),
        ("7n", 7e-9),
        (" 10S ", 10),
    ],
)
def test_parse_grpc_timeout(header: str, seconds: float) -> None:
    assert parse_grpc_timeout(header) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "10", "S", "123456789S", "-1S", "1.5S", "1s", "1 S", "1SS"])
def test_parse_grpc_timeout_rejects_malformed_values(bad: str) -> None:
    with pytest.raises(ValueError, match="grpc-timeout"):
        parse_grpc_timeout(bad)


@given(st.floats(min_value=0.0, max_value=3.5e11, allow_nan=False))  # 99999999H is ~3.6e11 s
def test_grpc_timeout_round_trip_never_shortens_and_fits_8_digits(seconds: float) -> None:
    header = format_grpc_timeout(seconds)
    assert len(header) <= 9
    back = parse_grpc_timeout(header)
    assert back >= seconds - 1e-9 * max(1.0, seconds)
    # Rounded up by less than one unit of the finest unit that fits 8 digits;
    # units grow 1000x at most, so that unit is below 1e-5 of the value.
    assert back - seconds <= 1e-5 * seconds + 1e-9


@given(st.text(max_size=12))
def test_parse_grpc_timeout_never_crashes(text: str) -> None:
    try:
        value = parse_grpc_timeout(text)
    except ValueError:
        return
    assert value >= 0


def test_deadline_header_round_trip() -> None:
    sender, receiver = VirtualClock(10.0), VirtualClock(5000.0)
    d = Deadline.after(1.5, clock=sender)
    sender.advance(0.25)
    header = d.to_header()
    assert header == "1250000u"
    received = Deadline.from_header(header, clock=receiver)
    assert received.remaining() == pytest.approx(1.25)
