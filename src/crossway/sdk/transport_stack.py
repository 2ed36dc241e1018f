"""One service's call plan: its CallPolicy folded once into ready objects
(balancer, outlier detector, breaker, bulkhead, retries, timeout), and the
steps of one call and one attempt that the drivers (transport_drive.py) run.

Theory of operation
-------------------
A `ServiceStack` is built per service from its policy and rebuilt only when
that policy changes (its breaker, budget and outlier state then start
afresh); membership changes reach it through `update`, never on the request
path. Per call, `begin_call` picks the retry policy and the trace parts
(`traceparent`, `tracestate`, `X-Crossway-Caller`); per attempt, `prepare`
stamps the headers and the deadline, picks an instance (ejected ones
excluded, another one on a retry) and moves the URL to it; `answered` or
`failed` record the outcome to balancer, detector (and the breaker, through
the driver), and `observe` to telemetry. `end_call` gives the caller back
its URL and timeouts.

Invariants
----------
- Balancer and detector are touched under a short lock, never held across I/O.
- A call's bookkeeping goes to the stack it started on, even if a policy
  change replaced that stack meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from crossway.balance import NO_CALL, Call, Endpoint, Outcome
from crossway.core.clock import Clock, SystemClock
from crossway.core.durations import parse_duration
from crossway.core.errors import Unavailable
from crossway.registry.model import Instance
from crossway.resilience import DeadlineExceeded, RetryPolicy, current_deadline
from crossway.resilience.deadline import remaining_time
from crossway.sdk.policies import (
    CallPolicy,
    build_balancer,
    build_breaker,
    build_bulkhead,
    build_outlier,
    build_retries,
)
from crossway.sdk.telemetry import (
    CALLER_HEADER,
    ROUTE_EXTENSION,
    ServiceTelemetry,
    new_trace_parts,
)
from crossway.sdk.transport_flavor import Flavor
from crossway.telemetry.tracecontext import (
    TRACEPARENT,
    TRACESTATE,
    child_traceparent_parts,
    current_trace,
    format_tracestate,
    new_span_id,
)

DEADLINE_HEADER = "X-Crossway-Deadline"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_TRACEPARENT, _TRACESTATE = TRACEPARENT.encode(), TRACESTATE.encode()
_DEADLINE = DEADLINE_HEADER.lower().encode()
_CALLER = CALLER_HEADER.lower().encode()
_HAS_TRACEPARENT, _HAS_CALLER = 1, 2  # flavor.find_headers(headers, _TRACEPARENT, _CALLER)
_SUCCESS = Outcome.SUCCESS


class NoInstancesError(Unavailable):
    """The service has no instance to send the request to."""

    code = "no_instances"


def endpoints_of(instances: Iterable[Instance]) -> list[Endpoint]:
    """Balancer endpoints for discovered instances; weight 0 drains an instance,
    `critical` marks it unhealthy."""
    return [
        Endpoint(
            i.id,
            i.address.lower(),
            i.port,
            weight=i.weight,
            zone=i.zone or "",
            healthy=i.status != "critical",
            metadata=i.metadata,
        )
        for i in instances
        if i.weight > 0
    ]


class CallState:
    """One logical call: the caller's request and what its attempts share."""

    __slots__ = (
        "began",
        "parent_id",
        "request",
        "response",
        "retry",
        "sampled",
        "span_id",
        "timeouts",
        "trace",
        "tried",
        "url",
    )

    def __init__(
        self,
        request: Any,
        retry: RetryPolicy | None,
        trace: tuple[str, str] | None,
        parent_id: str | None = None,
        sampled: bool = False,
        first_span_id: str | None = None,
    ) -> None:
        self.request = request
        self.url = request.url
        self.retry = retry
        self.trace = trace  # (prefix, suffix) of each attempt's traceparent
        self.parent_id = parent_id  # the span the attempts' client spans are children of
        self.sampled = sampled  # whether client spans are recorded
        self.span_id = first_span_id  # the current attempt's span id
        self.began = 0.0  # perf_counter() when the current attempt was sent
        self.timeouts: Any = None  # the caller's httpx timeouts, once shrunk
        self.tried: list[str] | None = None  # instances tried; None before the first attempt
        self.response: Any = None  # the last attempt's response, until returned


def _shrunk(timeouts: Mapping[str, float | None] | None, left: float) -> dict[str, float]:
    if not timeouts:
        return dict.fromkeys(("connect", "read", "write", "pool"), left)
    return {k: left if v is None or v > left else v for k, v in timeouts.items()}


def _deadline_passed() -> bool:
    deadline = current_deadline()
    return deadline is not None and deadline.expired()


class ServiceStack:
    """One service's folded policy stack; see the module header.

    Thread-safe: balancer and detector are touched under a short lock that
    is never held across I/O.
    """

    def __init__(
        self,
        service: str,
        policy: CallPolicy,
        *,
        flavor: Flavor,
        zone: str | None,
        clock: Clock,
        telemetry: ServiceTelemetry | None = None,
    ) -> None:
        self.service = service
        self.policy = policy
        self._flavor = flavor
        self.telemetry = telemetry
        self._lock = threading.Lock()
        self.now = time.monotonic if type(clock) is SystemClock else clock.now
        self.balancer = build_balancer(policy, zone=zone, clock=clock)
        self.detector = build_outlier(policy, clock=clock)
        self.breaker = build_breaker(policy, name=service, ignore=(NoInstancesError,), clock=clock)
        self.bulkhead = build_bulkhead(policy, name=service)
        self.retries = build_retries(
            policy,
            safe_errors=(flavor.transport_error, DeadlineExceeded),
            unsent_errors=flavor.unsent_errors,
            abort_on=(NoInstancesError,),
            clock=clock,
        )
        self.timeout = None if policy.timeout is None else parse_duration(policy.timeout)
        self._hash_header = policy.hash_header
        self._rewrite = flavor.rewrite
        self._ejected: frozenset[str] = frozenset()
        self._addresses: dict[str, str] = {}  # endpoint id -> "address:port", for spans
        self._url_text = flavor.url_text
        caller = telemetry.service.encode("ascii") if telemetry is not None else b""
        self._caller_entry = (_CALLER, _CALLER, caller)
        self.size = 0

    def update(self, instances: Iterable[Instance]) -> None:
        """Membership changed (a discovery event)."""
        endpoints = endpoints_of(instances)
        with self._lock:
            self.balancer.update(endpoints)
            if self.detector is not None:
                self.detector.update(endpoints)
            self.size = len(endpoints)
            self._addresses = {e.id: f"{e.address}:{e.port}" for e in endpoints}

    # -- one logical call ---------------------------------------------------------------

    def begin_call(self, request: Any) -> CallState:
        retries, retry = self.retries, None
        if retries is not None and isinstance(request.stream, self._flavor.byte_stream):
            retry = retries.safe if request.method in IDEMPOTENT else retries.unsafe
        headers, flavor, telemetry = request.headers, self._flavor, self.telemetry
        found = flavor.find_headers(headers, _TRACEPARENT, _CALLER)
        if found & _HAS_TRACEPARENT:  # the caller's own: left alone
            if telemetry is not None:
                flavor.set_header(headers, _CALLER, telemetry.service)
            return CallState(request, retry, None)
        parent = current_trace()
        if parent is not None and parent.tracestate:
            flavor.set_header(headers, _TRACESTATE, format_tracestate(parent.tracestate))
        if telemetry is None:
            if parent is None:
                parts, span_id = new_trace_parts(True)
                call = CallState(request, retry, parts, None, False, span_id)
            else:
                parts, span_id = child_traceparent_parts(parent), new_span_id()
                call = CallState(request, retry, parts, None, False, span_id)
            flavor.add_header(headers, _TRACEPARENT, parts[0] + span_id + parts[1])
            return call
        parts, parent_id, sampled, first_span_id = telemetry.trace_parts(parent)
        span_id = first_span_id or new_span_id()
        traceparent = (parts[0] + span_id + parts[1]).encode("ascii")
        # The first attempt's headers, added in one step (`prepare` replaces
        # the traceparent on a retry).
        if found & _HAS_CALLER:
            flavor.set_header(headers, _CALLER, telemetry.service)
            flavor.add_entries(headers, ((_TRACEPARENT, _TRACEPARENT, traceparent),))
        else:
            entries = (self._caller_entry, (_TRACEPARENT, _TRACEPARENT, traceparent))
            flavor.add_entries(headers, entries)
        return CallState(request, retry, parts, parent_id, sampled, span_id)

    @staticmethod
    def end_call(call: CallState) -> None:
        request = call.request
        request.url = call.url
        if call.timeouts is not None:
            request.extensions["timeout"] = call.timeouts
        if call.tried is None and call.trace is not None:
            # Refused before its first attempt (breaker, bulkhead, deadline, no
            # instance): the traceparent `begin_call` stamped for that attempt
            # goes, or the request sent again would look like carrying the
            # caller's own trace and get no client span.
            with contextlib.suppress(KeyError):
                del request.headers["traceparent"]

    # -- one attempt ------------------------------------------------------------------------

    def prepare(self, call: CallState) -> tuple[Endpoint, Call]:
        """Everything before one attempt is sent: headers, the instance, the URL.

        DeadlineExceeded when no time is left; NoInstancesError when there is
        no instance to pick. One method on purpose: it runs for every attempt.
        """
        request, trace, tried = call.request, call.trace, call.tried
        if tried is None:  # the first attempt: `begin_call` stamped its headers
            tried = call.tried = []
        elif trace is not None:
            span_id = call.span_id = new_span_id()
            self._flavor.set_header(request.headers, _TRACEPARENT, trace[0] + span_id + trace[1])
        left = remaining_time()
        if left is not None:
            self._stamp_deadline(call, left)
        balancer, detector = self.balancer, self.detector
        with self._lock:
            now = self.now()
            if detector is not None:
                ejected = detector.ejected(now)  # the same object while nothing changed
                if ejected is not self._ejected:
                    balancer.set_ejected(ejected)
                    self._ejected = ejected
            key = request.headers.get(self._hash_header) if self._hash_header else None
            endpoint = balancer.pick(key)
            if endpoint is None:
                raise self._no_instances()
            if tried:  # a retry: another instance than before, when there is one
                endpoint = self._another(endpoint, tried)
            tried.append(endpoint.id)
            lb_call = balancer.begin(endpoint, now)
        request.url = self._rewrite(call.url, endpoint.address, endpoint.port)
        call.began = time.perf_counter()
        return endpoint, lb_call

    def _stamp_deadline(self, call: CallState, left: float) -> None:
        if left <= 0:
            raise DeadlineExceeded(f"deadline exceeded before calling {self.service}")
        request = call.request
        self._flavor.set_header(request.headers, _DEADLINE, str(int(left * 1000)))
        if call.timeouts is None:
            call.timeouts = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = _shrunk(call.timeouts, left)

    def _another(self, endpoint: Endpoint, tried: list[str]) -> Endpoint:
        # A few unkeyed picks: a retry should not return to the instance that
        # just failed, but must not spin when every instance has been tried.
        for _ in range(min(self.size, 4)):
            if endpoint.id not in tried:
                break
            endpoint = self.balancer.pick(None) or endpoint
        return endpoint

    def _no_instances(self) -> NoInstancesError:
        hint = (
            "; a host without a dot is looked up as a service (list it in "
            "passthrough_hosts to resolve it through DNS instead)"
            if self.size == 0
            else ""
        )
        return NoInstancesError(
            f"no instance of {self.service!r} is available{hint}", service=self.service
        )

    def answered(self, endpoint: Endpoint, call: Call, status: int) -> None:
        detector = self.detector
        if call is NO_CALL and detector is None:
            return
        with self._lock:
            now = self.now()
            if call is not NO_CALL:
                call.end(ok=status < 500, now=now)
            if detector is not None:
                outcome = _SUCCESS if status < 500 else Outcome.from_status(status)
                detector.record(endpoint.id, outcome, now)

    def failed(self, endpoint: Endpoint, call: Call, exc: BaseException) -> None:
        # Transport errors and per-try timeouts count against the instance;
        # a cancellation from outside says nothing about it.
        against = isinstance(exc, self._flavor.transport_error) or (
            isinstance(exc, asyncio.CancelledError) and _deadline_passed()
        )
        with self._lock:
            now = self.now()
            call.end(ok=False, now=now)
            if against and self.detector is not None:
                self.detector.record(endpoint.id, Outcome.GATEWAY_ERROR, now)

    def observe(
        self, call: CallState, endpoint: Endpoint, status: int, error: BaseException | None
    ) -> None:
        """Telemetry of one attempt: client-side signals and, if sampled, a span."""
        telemetry = self.telemetry
        if telemetry is None:
            return
        ended = time.perf_counter()
        request = call.request
        span = None
        if call.sampled:
            address = self._addresses.get(endpoint.id) or f"{endpoint.address}:{endpoint.port}"
            attempt = len(call.tried or ())
            url = self._url_text(call.url)
            span = (call.trace, call.span_id, call.parent_id, url, attempt, address, error)
        route = request.extensions.get(ROUTE_EXTENSION)
        telemetry.attempted(
            self.service, request.method, route, status, call.began, ended, call.sampled, span
        )

    def next_delay(
        self, policy: RetryPolicy, tries: int, start: float, previous: float | None
    ) -> float | None:
        """Seconds before the next try, or None to give up: the policy's
        limits and backoff, the deadline, then the budget (asked last, so a
        retry that would not happen anyway spends nothing)."""
        delay = policy.next_delay(
            tries, elapsed=self.now() - start, remaining=remaining_time(), previous=previous
        )
        budget = self.retries.budget if self.retries is not None else None
        if delay is None or (budget is not None and not budget.try_withdraw()):
            return None
        return delay
