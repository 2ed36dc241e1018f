# Per-service circuit breaking and retry budgets for the gateway.
#
# Theory of operation
# -------------------
# Each upstream service may have a call policy (crossway.traffic.policy) at
# the control plane's `/policies/{service}`, falling back to
# `/policies/default`. The gateway takes three things from it here, as
# Envoy's circuit breakers do per cluster:
#
#   bulkhead.max_concurrent   requests in flight to the service; beyond it
#                             a request waits in the queue or is refused
#                             (`max_requests`);
#   bulkhead.max_queue        requests waiting for a slot, each up to
#                             `max_wait` (and never past the request's own
#                             deadline); beyond it, or when the wait runs
#                             out: refused (`max_pending`);
#   breaker                   consecutive or rate breaker of
#                             crossway.resilience judging whole requests
#                             (after their retries): open -> refused
#                             (`breaker_open`), half-open -> a few probes.
#
# Every refusal is a 503 with the JSON error (`upstream_overloaded` or
# `breaker_open`) and `X-Crossway-Overloaded: <why>`, Envoy's
# `x-envoy-overloaded` idea with the reason spelt out.
#
# `ServiceGuards` holds one `ServiceGuard` per service that has something
# to enforce, made on the first request after a policy change and kept
# while the service's policy stays equal, so a swap of the configuration
# that leaves a service's policy alone keeps its breaker state and its
# in-flight count. A service without a breaker or bulkhead has no guard:
# the engine's whole cost for it is one dict lookup.
#
# `RetryBudgets` holds Finagle's retry budget (crossway.resilience) per
# upstream service and budget setting, shared by every route with that
# setting, behind a `RetryGate`: the engine deposits once per request and,
# before an attempt whose answer it might drop for a retry, reserves one
# retry; after the attempt it spends the reservation (the retry happens) or
# cancels it. A retry the gate cannot reserve is refused before the attempt,
# so the attempt's answer is relayed rather than dropped; reservations make
# that exact under concurrency (requests in flight cannot all count on the
# same last retry).
#
# Invariants
# ----------
# - A guard's in-flight count and queue obey crossway.resilience's
#   BulkheadCore rules: active <= max_concurrent, waiting <= max_queue, a
#   slot handed to a waiter that gave up is passed on, never lost.
# - Every request admitted by `enter` is settled by exactly one `leave`,
#   which also reports the breaker outcome (or releases a probe slot when
#   the request never reached an upstream).
from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from crossway.core.clock import Clock
from crossway.core.durations import parse_duration
from crossway.proxy.errors import OVERLOADED_HEADER, GatewayError
from crossway.resilience import (
    BreakerConfig,
    CircuitBreaker,
    ConsecutiveBreaker,
    RetryBudget,
    State,
    StateTransition,
)
from crossway.resilience.bulkhead import BulkheadCore
from crossway.traffic.policy import DEFAULT_NAME, SERVER_ERRORS, BreakerSpec, CallPolicy

Breaker = ConsecutiveBreaker | CircuitBreaker
Events = Callable[[str, str], None]
"""Told (service, event): "max_requests", "max_pending", "breaker_open", "trip"."""


class UpstreamOverloaded(GatewayError):
    """The service's concurrency limit or queue refused the request."""

    code = "upstream_overloaded"
    status = 503


class BreakerOpen(GatewayError):
    """The service's circuit breaker is open (or its half-open probes are taken)."""

    code = "breaker_open"
    status = 503


def _refusal(kind: type[GatewayError], why: str, message: str) -> GatewayError:
    return kind(message, reason=why, headers=((OVERLOADED_HEADER, why.encode()),))


def effective_policy(policies: Mapping[str, CallPolicy], service: str) -> CallPolicy | None:
    """The service's own policy, else the default one, else None."""
    return policies.get(service) or policies.get(DEFAULT_NAME)


def make_breaker(spec: BreakerSpec, *, name: str, clock: Clock) -> Breaker:
    """The breaker a policy's `breaker` section describes (outcomes are
    reported by the engine, so no result predicate is needed)."""
    open_for = parse_duration(spec.open_for)
    if spec.kind == "consecutive":
        return ConsecutiveBreaker(
            name,
            fail_max=spec.failures,
            reset_timeout=open_for,
            success_threshold=spec.half_open_calls,
            clock=clock,
        )
    config = BreakerConfig(
        failure_rate_threshold=spec.failure_rate,
        sliding_window_size=spec.window,
        minimum_number_of_calls=spec.minimum_calls,
        wait_duration_in_open_state=open_for,
        permitted_number_of_calls_in_half_open_state=spec.half_open_calls,
    )
    return CircuitBreaker(name, config, clock=clock)


class ServiceGuard:
    """One service's limits (see the module header); one event loop only."""

    __slots__ = ("_clock", "_events", "breaker", "core", "fail_on", "max_wait", "service")

    def __init__(
        self, service: str, policy: CallPolicy, *, clock: Clock, events: Events | None = None
    ) -> None:
        self.service = service
        self._clock = clock
        self._events = events
        bulkhead = policy.bulkhead
        self.core: BulkheadCore[asyncio.Future[None]] | None = None
        self.max_wait: float | None = None
        if bulkhead is not None:
            self.core = BulkheadCore(bulkhead.max_concurrent, bulkhead.max_queue)
            if bulkhead.max_wait is not None:
                self.max_wait = parse_duration(bulkhead.max_wait)
        self.breaker: Breaker | None = None
        self.fail_on: frozenset[int] = SERVER_ERRORS
        if policy.breaker is not None:
            self.breaker = make_breaker(policy.breaker, name=service, clock=clock)
            self.breaker.add_listener(self._transition)
            self.fail_on = frozenset(policy.breaker.fail_on) or SERVER_ERRORS

    def _transition(self, change: StateTransition) -> None:
        if change.to_state is State.OPEN and self._events is not None:
            self._events(self.service, "trip")

    def _refuse(self, kind: type[GatewayError], why: str, message: str) -> GatewayError:
        if self._events is not None:
            self._events(self.service, why)
        return _refusal(kind, why, f"{self.service}: {message}")

    async def enter(self, wait_at_most: float) -> float:
        """Admit one request, waiting at most `wait_at_most` seconds for a
        slot (less when the policy's `max_wait` is shorter); returns the start
        time to hand back to `leave`.

        Raises BreakerOpen or UpstreamOverloaded. Cancelled while queued, no
        slot is kept and CancelledError propagates.
        """
        started = self._clock.now()
        breaker = self.breaker
        if breaker is not None and not breaker.allow(started):
            raise self._refuse(BreakerOpen, "breaker_open", "circuit breaker open")
        core = self.core
        if core is None or core.try_enter():
            return started
        try:
            await self._queue(core, wait_at_most)
        except BaseException:
            if breaker is not None:
                breaker.release()
            raise
        return started

    async def _queue(self, core: BulkheadCore[asyncio.Future[None]], wait_at_most: float) -> None:
        if core.max_queue == 0:
            raise self._refuse(UpstreamOverloaded, "max_requests", "too many requests in flight")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not core.enqueue(waiter):
            raise self._refuse(UpstreamOverloaded, "max_pending", "too many requests waiting")
        wait = wait_at_most if self.max_wait is None else min(self.max_wait, wait_at_most)
        try:
            async with asyncio.timeout(max(wait, 0.0)):
                await waiter
        except TimeoutError:
            if core.cancel(waiter):
                message = f"no free slot within {wait:g}s"
                raise self._refuse(UpstreamOverloaded, "max_pending", message) from None
            # handed a slot just as the wait ran out: keep it
        except BaseException:
            if not core.cancel(waiter):
                self._free_slot(core)  # the slot was ours already: pass it on
            raise

    def leave(self, started: float, failed: bool | None) -> None:
        """Settle a request `enter` admitted: `failed` True/False reports the
        breaker outcome, None releases it uncounted (no upstream was asked)."""
        if self.core is not None:
            self._free_slot(self.core)
        breaker = self.breaker
        if breaker is None:
            return
        if failed is None:
            breaker.release()
        elif isinstance(breaker, CircuitBreaker):
            duration = self._clock.now() - started
            (breaker.on_failure if failed else breaker.on_success)(duration)
        elif failed:
            breaker.on_failure()
        else:
            breaker.on_success()

    @staticmethod
    def _free_slot(core: BulkheadCore[asyncio.Future[None]]) -> None:
        waiter = core.release()
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        # A waiter already done was cancelled or timed out after being
        # handed the slot; its own handler keeps or passes the slot on.

    def describe(self) -> dict[str, object]:
        """For the admin port's /clusters page."""
        shown: dict[str, object] = {}
        if self.core is not None:
            shown.update(active=self.core.active, waiting=self.core.waiting)
        if self.breaker is not None:
            shown["breaker"] = self.breaker.current_state().value
        return shown


class ServiceGuards:
    """The guard of every service that has one (see the module header)."""

    def __init__(self, *, clock: Clock, events: Events | None = None) -> None:
        self._clock = clock
        self._events = events
        self._policies: Mapping[str, CallPolicy] = {}
        self._guards: dict[str, ServiceGuard | None] = {}
        self._built: dict[str, CallPolicy] = {}

    def update(self, policies: Mapping[str, CallPolicy]) -> None:
        """Adopt new policies; guards of services whose limits are unchanged stay."""
        self._policies = policies
        kept: dict[str, ServiceGuard | None] = {}
        for service, guard in self._guards.items():
            old = self._built.get(service)
            new = effective_policy(policies, service)
            if guard is not None and old is not None and new is not None and _same_limits(old, new):
                kept[service] = guard
            elif guard is None and not _guarded(new):
                kept[service] = None
        self._guards = kept
        self._built = {s: p for s, p in self._built.items() if s in kept}

    def get(self, service: str) -> ServiceGuard | None:
        """The service's guard, None when its policy limits nothing."""
        try:
            return self._guards[service]
        except KeyError:
            return self._make(service)

    def _make(self, service: str) -> ServiceGuard | None:
        policy = effective_policy(self._policies, service)
        guard = None
        if policy is not None and _guarded(policy):
            guard = ServiceGuard(service, policy, clock=self._clock, events=self._events)
            self._built[service] = policy
        self._guards[service] = guard
        return guard

    def all(self) -> dict[str, ServiceGuard]:
        return {s: g for s, g in sorted(self._guards.items()) if g is not None}


def _guarded(policy: CallPolicy | None) -> bool:
    return policy is not None and (policy.bulkhead is not None or policy.breaker is not None)


def _same_limits(old: CallPolicy, new: CallPolicy) -> bool:
    return old.bulkhead == new.bulkhead and old.breaker == new.breaker


class RetryGate:
    """A retry budget with reservations (see the module header); one event
    loop only. Every `reserve` that returns True is followed by exactly one
    `spend` or `cancel`."""

    __slots__ = ("budget", "reserved")

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self.reserved = 0

    def deposit(self) -> None:
        """One request was made."""
        self.budget.deposit()

    def reserve(self) -> bool:
        """Hold one retry for a request about to try; False when none is left."""
        if self.budget.balance() - self.reserved <= 0:
            return False
        self.reserved += 1
        return True

    def spend(self) -> None:
        """The held retry is taken. (Deposits that expired while the attempt
        ran can leave nothing to withdraw; the retry goes ahead regardless,
        its answer having been dropped already.)"""
        self.reserved -= 1
        self.budget.try_withdraw()

    def cancel(self) -> None:
        """The held retry was not needed."""
        self.reserved -= 1


class RetryBudgets:
    """Finagle's retry budget per (service, budget setting), kept across swaps."""

    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._budgets: dict[tuple[str, float, float, float], RetryGate] = {}

    def budget(
        self, service: str, *, percent: float, min_per_second: float, ttl: float
    ) -> RetryGate:
        key = (service, percent, min_per_second, ttl)
        found = self._budgets.get(key)
        if found is None:
            budget = RetryBudget(
                ttl=ttl,
                min_retries_per_sec=min_per_second,
                percent_can_retry=percent / 100.0,
                clock=self._clock,
            )
            found = self._budgets[key] = RetryGate(budget)
        return found
