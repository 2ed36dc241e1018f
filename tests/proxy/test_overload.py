"""Per-service circuit breaking (overload.py) on a virtual clock."""

from __future__ import annotations

import asyncio

import pytest

from crossway.core.clock import VirtualClock
from crossway.proxy.errors import render
from crossway.proxy.overload import (
    BreakerOpen,
    RetryBudgets,
    ServiceGuards,
    UpstreamOverloaded,
    effective_policy,
)
from crossway.traffic.policy import BreakerSpec, BulkheadSpec, CallPolicy, OutlierSpec

BULKHEAD = CallPolicy(bulkhead=BulkheadSpec(max_concurrent=2))
QUEUED = CallPolicy(bulkhead=BulkheadSpec(max_concurrent=1, max_queue=1, max_wait="1s"))
BREAKER = CallPolicy(breaker=BreakerSpec(failures=2, open_for="10s"))


def guards(policies: dict[str, CallPolicy], events: list[tuple[str, str]]) -> ServiceGuards:
    found = ServiceGuards(clock=VirtualClock(), events=lambda s, e: events.append((s, e)))
    found.update(policies)
    return found


def test_the_service_policy_wins_over_the_default() -> None:
    assert effective_policy({"a": BULKHEAD, "default": BREAKER}, "a") is BULKHEAD
    assert effective_policy({"a": BULKHEAD, "default": BREAKER}, "b") is BREAKER
    assert effective_policy({"a": BULKHEAD}, "b") is None


def test_a_service_without_limits_has_no_guard() -> None:
    found = guards({"a": CallPolicy(), "default": CallPolicy(outlier=OutlierSpec())}, [])
    assert found.get("a") is None
    assert found.get("b") is None


async def test_max_requests_refuses_beyond_the_limit_and_frees_on_leave() -> None:
    events: list[tuple[str, str]] = []
    guard = guards({"a": BULKHEAD}, events).get("a")
    assert guard is not None
    first, second = await guard.enter(5.0), await guard.enter(5.0)
    with pytest.raises(UpstreamOverloaded) as refused:
        await guard.enter(5.0)
    assert refused.value.reason == "max_requests"
    assert b"x-crossway-overloaded: max_requests" in render(refused.value)
    assert events == [("a", "max_requests")]
    guard.leave(first, False)
    guard.leave(await guard.enter(5.0), False)
    guard.leave(second, False)
    assert guard.core is not None
    assert guard.core.active == 0


async def test_a_waiter_gets_the_freed_slot_and_the_queue_is_bounded() -> None:
    guard = guards({"a": QUEUED}, []).get("a")
    assert guard is not None
    held = await guard.enter(5.0)
    waiting = asyncio.ensure_future(guard.enter(5.0))
    await asyncio.sleep(0)
    with pytest.raises(UpstreamOverloaded) as refused:
        await guard.enter(5.0)
    assert refused.value.reason == "max_pending"
    guard.leave(held, False)
    guard.leave(await asyncio.wait_for(waiting, 1), False)
    assert guard.core is not None
    assert (guard.core.active, guard.core.waiting) == (0, 0)


async def test_a_wait_longer_than_allowed_is_max_pending_and_keeps_no_slot() -> None:
    guard = guards({"a": QUEUED}, []).get("a")
    assert guard is not None
    held = await guard.enter(5.0)
    with pytest.raises(UpstreamOverloaded) as refused:
        await guard.enter(0.01)  # the request's own deadline is shorter than max_wait
    assert refused.value.reason == "max_pending"
    guard.leave(held, False)
    assert guard.core is not None
    assert (guard.core.active, guard.core.waiting) == (0, 0)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    guard = guards({"a": QUEUED}, []).get("a")
    assert guard is not None
    held = await guard.enter(5.0)
    waiting = asyncio.ensure_future(guard.enter(5.0))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    guard.leave(held, False)
    assert guard.core is not None
    assert (guard.core.active, guard.core.waiting) == (0, 0)


async def test_the_breaker_opens_counts_a_trip_then_half_opens() -> None:
    events: list[tuple[str, str]] = []
    clock = VirtualClock()
    found = ServiceGuards(clock=clock, events=lambda s, e: events.append((s, e)))
    found.update({"a": BREAKER})
    guard = found.get("a")
    assert guard is not None
    for _ in range(2):
        guard.leave(await guard.enter(1.0), True)
    with pytest.raises(BreakerOpen) as refused:
        await guard.enter(1.0)
    assert refused.value.reason == "breaker_open"
    assert events == [("a", "trip"), ("a", "breaker_open")]
    clock.advance(10.0)
    probe = await guard.enter(1.0)  # half-open: one probe
    with pytest.raises(BreakerOpen):
        await guard.enter(1.0)
    guard.leave(probe, False)
    guard.leave(await guard.enter(1.0), False)  # closed again


async def test_a_request_that_reached_no_upstream_releases_the_probe() -> None:
    clock = VirtualClock()
    found = ServiceGuards(clock=clock)
    found.update({"a": CallPolicy(breaker=BreakerSpec(failures=1, open_for="1s"))})
    guard = found.get("a")
    assert guard is not None
    guard.leave(await guard.enter(1.0), True)
    clock.advance(1.0)
    guard.leave(await guard.enter(1.0), None)  # e.g. no healthy endpoint
    guard.leave(await guard.enter(1.0), False)  # the probe slot came back


async def test_a_swap_keeps_guards_whose_limits_did_not_change() -> None:
    found = guards({"a": BULKHEAD, "b": BREAKER}, [])
    a, b = found.get("a"), found.get("b")
    found.update(
        {"a": CallPolicy(bulkhead=BulkheadSpec(max_concurrent=2), timeout="1s"), "b": BULKHEAD}
    )
    assert found.get("a") is a
    assert found.get("b") is not b
    found.update({})
    assert found.get("a") is None


def test_retry_budgets_are_shared_per_service_and_setting() -> None:
    budgets = RetryBudgets(clock=VirtualClock())
    one = budgets.budget("a", percent=20, min_per_second=0, ttl=10)
    assert budgets.budget("a", percent=20, min_per_second=0, ttl=10) is one
    assert budgets.budget("b", percent=20, min_per_second=0, ttl=10) is not one
    for _ in range(10):
        one.deposit()
    assert one.budget.balance() == 2


def test_reservations_keep_two_requests_from_counting_on_one_retry() -> None:
    gate = RetryBudgets(clock=VirtualClock()).budget("a", percent=20, min_per_second=0, ttl=10)
    for _ in range(5):
        gate.deposit()  # one retry earned
    assert gate.reserve()
    assert not gate.reserve()  # the only retry is held
    gate.cancel()  # not needed after all
    assert gate.reserve()
    gate.spend()
    assert not gate.reserve()
    assert gate.reserved == 0


def test_the_pool_refusal_names_its_reason_in_the_overloaded_header() -> None:
    from crossway.proxy.errors import Overloaded

    rendered = render(Overloaded("too many waiting", reason="max_pending"))
    assert rendered.startswith(b"HTTP/1.1 503 ")
    assert b"x-crossway-overloaded: max_pending\r\n" in rendered
