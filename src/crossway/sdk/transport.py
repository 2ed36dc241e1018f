"""An httpx2 transport that calls services by name: discovery, balancing,
retries with a budget, deadlines, circuit breaking, bulkheads, outlier
ejection and trace propagation, under the httpx API users already know.

    async with client.http() as http:                 # an httpx2.AsyncClient
        r = await http.get("http://orders/items/1")   # "orders" is a service

Theory of operation
-------------------
Resolution. A request whose host is a service name — no dot, not an IP
literal, not "localhost", a valid service name, not in `passthrough_hosts` —
is sent to an instance of that service, found through the discovery cache;
any other host goes to the inner transport untouched. An empty service
raises `NoInstancesError` (503) rather than falling back to DNS, so a
misspelt or drained service fails loudly. A port in the URL is ignored: the
instance's registered port is used. The request keeps `Host: orders` (the
mesh convention of Envoy and Linkerd): absolute URLs the callee builds point
back through discovery. `response.url` and `response.request.url` stay what
the caller asked for.

Per service, a `ServiceStack` is folded once from the service's CallPolicy
(policies.py) and rebuilt only when that policy changes (its breaker, budget
and outlier state then start afresh); the per-request path is a dict lookup
and calls into ready objects (linkerd2-proxy's layers):

    deadline (policy timeout, or the caller's deadline_scope)
      -> bulkhead -> circuit breaker (judges whole calls)
        -> retry loop (budget; backoff with jitter; another instance per try)
          -> attempt: pick an instance (outlier-ejected ones excluded), stamp
             traceparent and X-Crossway-Deadline, send on the shared inner
             transport, record the outcome to balancer, detector and breaker.

Membership follows `discovery.subscribe(service, ...)`; the balancer and the
outlier detector are updated on each change, never on the request path.

Headers. `traceparent` carries the current trace (crossway.telemetry
.tracecontext) or starts one, with a fresh span id per attempt; a caller's
own `traceparent` header is left alone. With the client's telemetry
(crossway.sdk.telemetry), each request also says who calls
(`X-Crossway-Caller: <own service>`), each attempt goes into the
client-side golden signals (route: the request's `crossway.route`
extension, else `*`), and each attempt of a sampled trace becomes a CLIENT
span whose id is the one its `traceparent` carries, so the callee's server
span is its child. `X-Crossway-Deadline` carries the
whole milliseconds left (rounded down, so the callee never believes it has
more time than the caller) whenever a deadline applies; the attempt's httpx
timeouts are shrunk to it as well.

Bodies. Retries need a body that can be sent again: bytes, JSON, form data.
A streamed body gets one attempt.

Invariants
----------
- Cancellation is never swallowed: it ends the balancer call, releases the
  breaker permit and bulkhead slot, closes any response held for a retry,
  and propagates.
- A response that is not returned to the caller is closed.
- A call's bookkeeping goes to the stack it started on, even if a policy
  change replaced that stack meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, Unpack

import httpx2

from crossway.balance import NO_CALL, Call, Endpoint, Outcome
from crossway.core.clock import Clock, SystemClock
from crossway.core.durations import parse_duration
from crossway.core.errors import Unavailable
from crossway.registry.model import NAME, Instance
from crossway.resilience import DeadlineExceeded, RetryPolicy, current_deadline, deadline_scope
from crossway.resilience.deadline import remaining_time
from crossway.sdk.policies import (
    CallPolicy,
    PolicyBook,
    PolicySource,
    build_balancer,
    build_breaker,
    build_bulkhead,
    build_outlier,
    build_retries,
    follow_control_plane,
)
from crossway.sdk.telemetry import CALLER_HEADER, ROUTE_EXTENSION, ServiceTelemetry
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
_MAX_PLAIN_HOSTS = 4096
_TRACEPARENT, _TRACESTATE = TRACEPARENT.encode(), TRACESTATE.encode()
_DEADLINE = DEADLINE_HEADER.lower().encode()
_CALLER = CALLER_HEADER.lower().encode()
_SUCCESS = Outcome.SUCCESS


class NoInstancesError(Unavailable):
    """The service has no instance to send the request to."""

    code = "no_instances"


class Discovery(Protocol):
    """What the transport needs of `crossway.sdk.discovery.DiscoveryCache`."""

    async def instances(self, service: str) -> list[Instance]: ...

    def peek(self, service: str) -> list[Instance] | None: ...

    def subscribe(
        self, service: str, callback: Callable[[str, list[Instance]], None]
    ) -> Callable[[], None]: ...


@dataclass(frozen=True, slots=True)
class Flavor:
    """What differs between HTTP client libraries (httpx2, httpx)."""

    unsent_errors: tuple[type[BaseException], ...]  # the request never left
    transport_error: type[BaseException]
    byte_stream: type[Any]  # a body that can be sent again
    rewrite: Callable[[Any, str, int], Any]  # (url, host, port) -> url
    has_header: Callable[[Any, bytes], bool]  # (headers, lower-case name)
    set_header: Callable[[Any, bytes, str], None]  # (headers, lower-case name, ASCII value)
    add_header: Callable[[Any, bytes, str], None]  # set_header for a header known absent


# Fast paths. httpx and httpx2 re-parse a whole URL to change its host (tens
# of microseconds) and work out the encoding of every header before a lookup.
# Both keep a parsed URL tuple (`_uri_reference`) and a list of
# (raw name, lower-case name, value) triples (`_list`) inside; using them
# directly makes the per-request path several times cheaper. Each fast path
# is checked against the public API once, at import, and a library whose
# insides differ gets the public API instead.


def url_rewriter(url_cls: type[Any]) -> Callable[[Any, str, int], Any]:
    """(url, host, port) -> the same URL on another host and port."""

    def fast(url: Any, host: str, port: int) -> Any:
        ref = url._uri_reference  # (scheme, userinfo, host, port, path, query, fragment)
        out = object.__new__(url_cls)
        out._uri_reference = tuple.__new__(
            type(ref), (ref[0], ref[1], host, port, ref[4], ref[5], ref[6])
        )
        return out

    def slow(url: Any, host: str, port: int) -> Any:
        return url.copy_with(host=host, port=port)

    try:
        sample = url_cls("https://svc:1/a/b?c=d#e")
        for host in ("10.0.0.1", "::1", "h.example"):
            if str(fast(sample, host, 8)) != str(slow(sample, host, 8)):
                return slow
    except (AttributeError, TypeError, IndexError):
        return slow
    return fast


HeaderOps = tuple[
    Callable[[Any, bytes], bool],
    Callable[[Any, bytes, str], None],
    Callable[[Any, bytes, str], None],
]


def header_ops(headers_cls: type[Any]) -> HeaderOps:
    """(has_header, set_header, add_header) for a library's Headers class."""

    def fast_has(headers: Any, name: bytes) -> bool:
        for item in headers._list:  # noqa: SIM110 - a plain loop: no generator per call
            if item[1] == name:
                return True
        return False

    def fast_set(headers: Any, name: bytes, value: str) -> None:
        entries = headers._list
        entry = (name, name, value.encode("ascii"))
        for i, item in enumerate(entries):
            if item[1] == name:
                entries[i] = entry
                return
        entries.append(entry)

    def fast_add(headers: Any, name: bytes, value: str) -> None:
        headers._list.append((name, name, value.encode("ascii")))

    def slow_has(headers: Any, name: bytes) -> bool:
        return any(k.lower() == name for k, _ in headers.raw)

    def slow_set(headers: Any, name: bytes, value: str) -> None:
        headers[name.decode("ascii")] = value

    try:
        fast_headers, slow_headers = (
            headers_cls({"A": "1", "b": "2"}),
            headers_cls({"A": "1", "b": "2"}),
        )
        for name, value in ((b"a", "3"), (b"c", "4")):
            fast_set(fast_headers, name, value)
            slow_set(slow_headers, name, value)
        fast_add(fast_headers, b"e", "5")
        slow_set(slow_headers, b"e", "5")
        same = fast_headers.multi_items() == slow_headers.multi_items()
        if same and fast_has(fast_headers, b"c") and not fast_has(fast_headers, b"d"):
            return fast_has, fast_set, fast_add
    except (AttributeError, TypeError, IndexError):
        pass
    return slow_has, slow_set, slow_set


def flavor(
    *,
    unsent_errors: tuple[type[BaseException], ...],
    transport_error: type[BaseException],
    byte_stream: type[Any],
    url_cls: type[Any],
    headers_cls: type[Any],
) -> Flavor:
    has, set_, add = header_ops(headers_cls)
    rewrite = url_rewriter(url_cls)
    return Flavor(unsent_errors, transport_error, byte_stream, rewrite, has, set_, add)


HTTPX2 = flavor(
    unsent_errors=(httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout),
    transport_error=httpx2.TransportError,
    byte_stream=httpx2.ByteStream,
    url_cls=httpx2.URL,
    headers_cls=httpx2.Headers,
)


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


class _Call:
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
        self._telemetry = telemetry
        self._lock = threading.Lock()
        self._now = time.monotonic if type(clock) is SystemClock else clock.now
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

    def _begin(self, request: Any) -> _Call:
        retries, retry = self.retries, None
        if retries is not None and isinstance(request.stream, self._flavor.byte_stream):
            retry = retries.safe if request.method in IDEMPOTENT else retries.unsafe
        headers = request.headers
        telemetry = self._telemetry
        if telemetry is not None:
            self._flavor.set_header(headers, _CALLER, telemetry.service)
        if self._flavor.has_header(headers, _TRACEPARENT):
            return _Call(request, retry, None)  # the caller's own: left alone
        parent = current_trace()
        if parent is not None and parent.tracestate:
            self._flavor.set_header(headers, _TRACESTATE, format_tracestate(parent.tracestate))
        if telemetry is None:
            return _Call(request, retry, child_traceparent_parts(parent))
        parts, parent_id, sampled, first_span_id = telemetry.trace_parts(parent)
        return _Call(request, retry, parts, parent_id, sampled, first_span_id)

    @staticmethod
    def _end(call: _Call) -> None:
        request = call.request
        request.url = call.url
        if call.timeouts is not None:
            request.extensions["timeout"] = call.timeouts

    # -- one attempt ------------------------------------------------------------------------

    def _prepare(self, call: _Call) -> tuple[Endpoint, Call]:
        """Everything before one attempt is sent: headers, the instance, the URL.

        DeadlineExceeded when no time is left; NoInstancesError when there is
        no instance to pick. One method on purpose: it runs for every attempt.
        """
        request, trace, flavor, tried = call.request, call.trace, self._flavor, call.tried
        if tried is None:
            tried = call.tried = []
            if trace is not None:  # the first attempt: `_begin` saw no traceparent
                span_id = call.span_id = call.span_id or new_span_id()
                flavor.add_header(request.headers, _TRACEPARENT, trace[0] + span_id + trace[1])
        elif trace is not None:
            span_id = call.span_id = new_span_id()
            flavor.set_header(request.headers, _TRACEPARENT, trace[0] + span_id + trace[1])
        left = remaining_time()
        if left is not None:
            self._stamp_deadline(call, left)
        balancer, detector = self.balancer, self.detector
        with self._lock:
            now = self._now()
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

    def _stamp_deadline(self, call: _Call, left: float) -> None:
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

    def _answered(self, endpoint: Endpoint, call: Call, status: int) -> None:
        detector = self.detector
        if call is NO_CALL and detector is None:
            return
        with self._lock:
            now = self._now()
            if call is not NO_CALL:
                call.end(ok=status < 500, now=now)
            if detector is not None:
                outcome = _SUCCESS if status < 500 else Outcome.from_status(status)
                detector.record(endpoint.id, outcome, now)

    def _failed(self, endpoint: Endpoint, call: Call, exc: BaseException) -> None:
        # Transport errors and per-try timeouts count against the instance;
        # a cancellation from outside says nothing about it.
        against = isinstance(exc, self._flavor.transport_error) or (
            isinstance(exc, asyncio.CancelledError) and _deadline_passed()
        )
        with self._lock:
            now = self._now()
            call.end(ok=False, now=now)
            if against and self.detector is not None:
                self.detector.record(endpoint.id, Outcome.GATEWAY_ERROR, now)

    def _observe(
        self, call: _Call, endpoint: Endpoint, status: int, error: BaseException | None
    ) -> None:
        """Telemetry of one attempt: client-side signals and, if sampled, a span."""
        telemetry = self._telemetry
        if telemetry is None:
            return
        ended = time.perf_counter()
        request = call.request
        span = None
        if call.sampled:
            address = self._addresses.get(endpoint.id) or f"{endpoint.address}:{endpoint.port}"
            attempt = len(call.tried or ())
            span = (call.trace, call.span_id, call.parent_id, call.url, attempt, address, error)
        route = request.extensions.get(ROUTE_EXTENSION)
        telemetry.attempted(
            self.service, request.method, route, status, call.began, ended, call.sampled, span
        )

    def _next_delay(
        self, policy: RetryPolicy, tries: int, start: float, previous: float | None
    ) -> float | None:
        """Seconds before the next try, or None to give up: the policy's
        limits and backoff, the deadline, then the budget (asked last, so a
        retry that would not happen anyway spends nothing)."""
        delay = policy.next_delay(
            tries, elapsed=self._now() - start, remaining=remaining_time(), previous=previous
        )
        budget = self.retries.budget if self.retries is not None else None
        if delay is None or (budget is not None and not budget.try_withdraw()):
            return None
        return delay

    # -- async ------------------------------------------------------------------------------

    def fold_async(self, send: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
        """The call function for this stack over an async `send`; see the header."""
        # Bound once: this closure is the per-attempt hot path.
        prepare, answered, failed = self._prepare, self._answered, self._failed
        observe = self._observe if self._telemetry is not None else None

        async def attempt(call: _Call) -> Any:
            held = call.response
            if held is not None:
                call.response = None
                await held.aclose()
            endpoint, lb_call = prepare(call)
            try:
                response = await send(call.request)
            except BaseException as exc:
                failed(endpoint, lb_call, exc)
                if observe is not None:
                    observe(call, endpoint, 0, exc)
                raise
            answered(endpoint, lb_call, response.status_code)
            if observe is not None:
                observe(call, endpoint, response.status_code, None)
            call.response = response
            return response

        per_try = self.retries.per_try_timeout if self.retries is not None else None
        if per_try is not None:
            bare = attempt

            async def attempt(call: _Call) -> Any:
                async with deadline_scope(per_try):
                    return await bare(call)

        guarded = self._retrying_async(attempt)
        if self.breaker is not None:
            guarded = self.breaker(guarded)
        if self.bulkhead is not None:
            guarded = self.bulkhead(guarded)
        return self._entry_async(guarded)

    def _retrying_async(
        self, attempt: Callable[[_Call], Awaitable[Any]]
    ) -> Callable[[_Call], Awaitable[Any]]:
        budget = self.retries.budget if self.retries is not None else None
        now = self._now

        async def attempts(call: _Call) -> Any:
            policy = call.retry
            start = now()
            if budget is not None:
                budget.deposit(start)  # every call earns its share of retries
            if policy is None:
                return await attempt(call)
            try:
                response = await attempt(call)
            except Exception as exc:
                if not policy.retryable_exception(exc):
                    raise
                return await again(call, policy, start, exc)
            if response.status_code in policy.retry_on_statuses:
                return await again(call, policy, start, None)
            return response

        async def again(
            call: _Call, policy: RetryPolicy, start: float, exc: Exception | None
        ) -> Any:
            # The slow path: every try after the first failed one.
            tries, previous = 1, None
            while (delay := self._next_delay(policy, tries, start, previous)) is not None:
                await asyncio.sleep(delay)
                tries, previous = tries + 1, delay
                try:
                    response = await attempt(call)
                except Exception as failure:
                    if not policy.retryable_exception(failure):
                        raise
                    exc = failure
                    continue
                exc = None
                if response.status_code not in policy.retry_on_statuses:
                    return response
            if exc is not None:
                raise exc
            return call.response  # the last answer, given up on

        return attempts

    def _entry_async(
        self, guarded: Callable[[_Call], Awaitable[Any]]
    ) -> Callable[[Any], Awaitable[Any]]:
        timeout, begin, end = self.timeout, self._begin, self._end

        async def call_service(request: Any) -> Any:
            call = begin(request)
            try:
                if timeout is None:
                    return await guarded(call)
                async with deadline_scope(timeout):
                    return await guarded(call)
            except BaseException:
                held, call.response = call.response, None
                if held is not None:
                    await held.aclose()
                raise
            finally:
                end(call)

        return call_service

    # -- sync -------------------------------------------------------------------------------

    def fold_sync(self, send: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """As `fold_async`, for a blocking `send` (deadlines are cooperative:
        they shrink each attempt's timeouts and stop retries)."""
        prepare, answered, failed = self._prepare, self._answered, self._failed
        observe = self._observe if self._telemetry is not None else None
        per_try = self.retries.per_try_timeout if self.retries is not None else None

        def attempt(call: _Call) -> Any:
            held = call.response
            if held is not None:
                call.response = None
                held.close()
            if per_try is not None:
                with deadline_scope(per_try):
                    return sent(call)
            return sent(call)

        def sent(call: _Call) -> Any:
            endpoint, lb_call = prepare(call)
            try:
                response = send(call.request)
            except BaseException as exc:
                failed(endpoint, lb_call, exc)
                if observe is not None:
                    observe(call, endpoint, 0, exc)
                raise
            answered(endpoint, lb_call, response.status_code)
            if observe is not None:
                observe(call, endpoint, response.status_code, None)
            call.response = response
            return response

        guarded = self._retrying_sync(attempt)
        if self.breaker is not None:
            guarded = self.breaker(guarded)
        if self.bulkhead is not None:
            guarded = self.bulkhead(guarded)
        timeout, begin, end = self.timeout, self._begin, self._end

        def call_service(request: Any) -> Any:
            call = begin(request)
            try:
                if timeout is None:
                    return guarded(call)
                with deadline_scope(timeout):
                    return guarded(call)
            except BaseException:
                held, call.response = call.response, None
                if held is not None:
                    held.close()
                raise
            finally:
                end(call)

        return call_service

    def _retrying_sync(self, attempt: Callable[[_Call], Any]) -> Callable[[_Call], Any]:
        budget = self.retries.budget if self.retries is not None else None
        now = self._now

        def attempts(call: _Call) -> Any:
            policy = call.retry
            start = now()
            if budget is not None:
                budget.deposit(start)
            if policy is None:
                return attempt(call)
            tries, previous = 1, None
            exc: Exception | None = None
            while True:
                try:
                    response = attempt(call)
                except Exception as failure:
                    if not policy.retryable_exception(failure):
                        raise
                    exc = failure
                else:
                    exc = None
                    if response.status_code not in policy.retry_on_statuses:
                        return response
                delay = self._next_delay(policy, tries, start, previous)
                if delay is None:
                    break
                time.sleep(delay)
                tries, previous = tries + 1, delay
            if exc is not None:
                raise exc
            return call.response

        return attempts


def is_service_host(host: str, passthrough: frozenset[str]) -> bool:
    """Whether requests to `host` are resolved through discovery (module header)."""
    return (
        bool(host)
        and "." not in host
        and ":" not in host
        and host not in passthrough
        and NAME.fullmatch(host) is not None
    )


class Router:
    """Service stacks by host, fed by discovery and the policy book; one per transport."""

    def __init__(
        self,
        discovery: Discovery,
        *,
        book: PolicyBook,
        flavor: Flavor,
        send: Callable[[Any], Any],
        is_async: bool,
        zone: str | None,
        clock: Clock,
        passthrough_hosts: Iterable[str],
        telemetry: ServiceTelemetry | None = None,
    ) -> None:
        self.discovery = discovery
        self.telemetry = telemetry
        self.book = book
        self.stacks: dict[str, Callable[[Any], Any]] = {}  # host -> folded call
        self.plain: set[str] = set()  # hosts seen not to be services
        self._flavor, self._send, self._async = flavor, send, is_async
        self._zone, self._clock = zone, clock
        self._passthrough = frozenset({"localhost", *(h.lower() for h in passthrough_hosts)})
        self._services: dict[str, ServiceStack] = {}
        self._instances: dict[str, list[Instance]] = {}
        self._followed: set[str] = set()
        self._unsubscribe: list[Callable[[], None]] = [book.on_change(self._policy_changed)]

    def stack(self, service: str) -> ServiceStack | None:
        """The current stack of `service`, if it has been called."""
        return self._services.get(service)

    def is_service(self, host: str) -> bool:
        if is_service_host(host, self._passthrough):
            return True
        if len(self.plain) >= _MAX_PLAIN_HOSTS:
            self.plain.clear()
        self.plain.add(host)
        return False

    async def resolve(self, host: str) -> Callable[[Any], Any] | None:
        """The folded call for `host`, or None when it is not a service. The
        first request to a service waits for its first instance list
        (discovery's errors propagate)."""
        if not self.is_service(host):
            return None
        found = self.stacks.get(host)
        if found is not None:
            return found
        self._follow(host)
        if host not in self._instances:
            listed = await self.discovery.instances(host)
            self._instances.setdefault(host, listed)  # a newer event may have come first
        return self.stacks.get(host) or self._install(host)

    def resolve_known(self, host: str) -> Callable[[Any], Any] | None:
        """As `resolve`, without waiting: NoInstancesError if `host` was never
        discovered (call from the loop's thread, or with no loop at all)."""
        if not self.is_service(host):
            return None
        self._follow(host)
        if host not in self._instances:
            known = self.discovery.peek(host)
            if known is None:
                raise NoInstancesError(
                    f"{host!r} has not been discovered yet; a blocking client cannot wait "
                    "for it here (await client.discovery.instances(...) at start-up)",
                    service=host,
                )
            self._instances[host] = known
        return self.stacks.get(host) or self._install(host)

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    def _follow(self, service: str) -> None:
        # Subscribe before reading the list, so no change can fall in between.
        if service not in self._followed:
            self._followed.add(service)
            self._unsubscribe.append(self.discovery.subscribe(service, self._on_instances))

    def _install(self, service: str) -> Callable[[Any], Any]:
        stack = ServiceStack(
            service,
            self.book.policy_for(service),
            flavor=self._flavor,
            zone=self._zone,
            clock=self._clock,
            telemetry=self.telemetry,
        )
        stack.update(self._instances.get(service, ()))
        folded = stack.fold_async(self._send) if self._async else stack.fold_sync(self._send)
        self._services[service] = stack
        self.stacks[service] = folded
        return folded

    def _on_instances(self, service: str, instances: list[Instance]) -> None:
        self._instances[service] = instances
        stack = self._services.get(service)
        if stack is not None:
            stack.update(instances)

    def _policy_changed(self, name: str | None) -> None:
        for service in [name] if name is not None else list(self._services):
            stack = self._services.get(service)
            if stack is not None and self.book.policy_for(service) != stack.policy:
                self._install(service)


# -- transports ---------------------------------------------------------------------------


class TransportOptions(TypedDict, total=False):
    """Options of both transports (keyword-only): `policies` per service and
    `default_policy`, set in code; `control` (a `ControlPlane`) to follow the
    control plane's `/policies/` too; `zone`, the caller's, for zone-aware
    balancing; `clock`; `passthrough_hosts`, dotless hosts that are not services;
    `telemetry`, the calling service's signals and spans (a client's)."""

    policies: Mapping[str, CallPolicy] | None
    default_policy: CallPolicy | None
    control: PolicySource | None
    zone: str | None
    clock: Clock | None
    passthrough_hosts: Iterable[str]
    telemetry: ServiceTelemetry | None


class _Core:
    """Shared by every transport class: the router, the policy book and the
    control-plane follower (started from the first request to a service, in
    the running loop, never at construction, which may precede a fork)."""

    def _setup(
        self,
        discovery: Discovery,
        flavor: Flavor,
        inner: Any,
        is_async: bool,
        options: TransportOptions,
    ) -> None:
        self.inner = inner
        self.book = PolicyBook(options.get("policies"), default=options.get("default_policy"))
        self.router = Router(
            discovery,
            book=self.book,
            flavor=flavor,
            send=inner.handle_async_request if is_async else inner.handle_request,
            is_async=is_async,
            zone=options.get("zone"),
            clock=options.get("clock") or SystemClock(),
            passthrough_hosts=options.get("passthrough_hosts", ()),
            telemetry=options.get("telemetry"),
        )
        self._control = options.get("control")
        self._follower: asyncio.Future[None] | concurrent.futures.Future[None] | None = None
        self._lock = threading.Lock()

    def _follow_policies(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._control is None or self._follower is not None:
                return
            follow = follow_control_plane(self.book, self._control)
            if _running_loop() is loop:
                self._follower = loop.create_task(follow, name="crossway-call-policies")
            else:
                self._follower = asyncio.run_coroutine_threadsafe(follow, loop)


class AsyncCore(_Core):
    """The async transport logic, shared by the httpx2 and httpx adapters."""

    async def handle_async_request(self, request: Any) -> Any:
        """Send `request`; see the module header for what happens to it.

        Raises what the inner transport raises (after retries), and
        `NoInstancesError`, `CircuitOpenError`, `BulkheadFullError` or
        `DeadlineExceeded` (all `CrosswayError`s). Cancellation propagates
        after every resource the call held is released.
        """
        router = self.router
        host = request.url.host
        call = router.stacks.get(host)
        if call is None:
            if host in router.plain:
                return await self.inner.handle_async_request(request)
            self._follow_policies(asyncio.get_running_loop())
            call = await router.resolve(host)
            if call is None:
                return await self.inner.handle_async_request(request)
        return await call(request)

    async def aclose(self) -> None:
        """Stop following discovery and policies, then close the inner transport."""
        self.router.close()
        follower, self._follower = self._follower, None
        if isinstance(follower, asyncio.Future):
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        await self.inner.aclose()


class SyncCore(_Core):
    """The blocking transport logic, shared by the httpx2 and httpx adapters.

    Discovery lives on the client's event loop (`loop`): a service seen for
    the first time is resolved there (`run_coroutine_threadsafe`, waiting at
    most `resolve_timeout` seconds), and later requests use what it keeps
    current. On the loop's own thread, or without a loop, only services
    already known to the discovery cache can be called.
    """

    def _bind(self, loop: asyncio.AbstractEventLoop | None, resolve_timeout: float) -> None:
        self._loop = loop or _running_loop()
        self._resolve_timeout = resolve_timeout

    def handle_request(self, request: Any) -> Any:
        """Send `request` (blocking); errors as for `AsyncCore.handle_async_request`."""
        router = self.router
        host = request.url.host
        call = router.stacks.get(host)
        if call is None:
            if host in router.plain:
                return self.inner.handle_request(request)
            call = self._resolve(host)
            if call is None:
                return self.inner.handle_request(request)
        return call(request)

    def _resolve(self, host: str) -> Callable[[Any], Any] | None:
        loop = self._loop
        if loop is not None and loop.is_running():
            self._follow_policies(loop)
        if loop is None or not loop.is_running() or _running_loop() is loop:
            with self._lock:
                return self.router.resolve_known(host)
        future = asyncio.run_coroutine_threadsafe(self.router.resolve(host), loop)
        try:
            return future.result(self._resolve_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise NoInstancesError(
                f"discovering {host!r} took longer than {self._resolve_timeout:g}s", service=host
            ) from None

    def close(self) -> None:
        """Stop following discovery and policies, then close the inner transport."""
        loop = self._loop
        if loop is not None and loop.is_running() and _running_loop() is not loop:
            loop.call_soon_threadsafe(self.router.close)
        else:
            self.router.close()
        if self._follower is not None:
            self._follower.cancel()
        self.inner.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class CrosswayTransport(AsyncCore, httpx2.AsyncBaseTransport):
    """An `httpx2.AsyncClient` transport that calls services by name.

    `discovery` is a `DiscoveryCache` (or anything with its `instances`,
    `peek` and `subscribe`); `inner` sends the bytes, one shared connection
    pool (default `httpx2.AsyncHTTPTransport()`); options: `TransportOptions`.
    """

    def __init__(
        self,
        discovery: Discovery,
        *,
        inner: httpx2.AsyncBaseTransport | None = None,
        **options: Unpack[TransportOptions],
    ) -> None:
        self._setup(discovery, HTTPX2, inner or httpx2.AsyncHTTPTransport(), True, options)


class CrosswaySyncTransport(SyncCore, httpx2.BaseTransport):
    """The `httpx2.Client` counterpart of `CrosswayTransport` (see `SyncCore`)."""

    def __init__(
        self,
        discovery: Discovery,
        *,
        inner: httpx2.BaseTransport | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        resolve_timeout: float = 10.0,
        **options: Unpack[TransportOptions],
    ) -> None:
        self._setup(discovery, HTTPX2, inner or httpx2.HTTPTransport(), False, options)
        self._bind(loop, resolve_timeout)


# -- clients for a crossway Client ---------------------------------------------------------

# httpx client options that configure the connection pool, hence the inner transport.
POOL_OPTIONS = frozenset(
    {"verify", "cert", "http1", "http2", "limits", "local_address", "socket_options", "uds"}
)


def client_options(
    client: Any,
    follow_policies: bool,
    code: TransportOptions,
    httpx_options: Mapping[str, Any],
) -> tuple[TransportOptions, dict[str, Any], dict[str, Any]]:
    """(transport options, pool options, client options) for a crossway `Client`."""
    code["zone"] = getattr(client.settings, "zone", None)
    code["telemetry"] = getattr(client, "telemetry", None)
    if follow_policies:
        code["control"] = client.control
    pool = {k: v for k, v in httpx_options.items() if k in POOL_OPTIONS}
    rest = {k: v for k, v in httpx_options.items() if k not in POOL_OPTIONS}
    return code, pool, rest


def async_client(
    client: Any,
    *,
    policies: Mapping[str, CallPolicy] | None = None,
    default_policy: CallPolicy | None = None,
    follow_policies: bool = True,
    passthrough_hosts: Iterable[str] = (),
    **httpx_options: Any,
) -> httpx2.AsyncClient:
    """An `httpx2.AsyncClient` over a `CrosswayTransport` for a crossway `Client`.

    Pool options (verify, cert, http2, limits …) configure the inner
    transport; the others go to the AsyncClient. With `follow_policies`
    the control plane's `/policies/` apply too (code wins: policies.py).
    Make one and reuse it (breaker, budget and outlier state live in it);
    close it (`async with` / `aclose()`) to stop its followers.
    """
    code: TransportOptions = {
        "policies": policies,
        "default_policy": default_policy,
        "passthrough_hosts": passthrough_hosts,
    }
    options, pool, rest = client_options(client, follow_policies, code, httpx_options)
    inner = httpx2.AsyncHTTPTransport(**pool)
    transport = CrosswayTransport(client.discovery, inner=inner, **options)
    return httpx2.AsyncClient(transport=transport, **rest)


def sync_client(
    client: Any,
    *,
    policies: Mapping[str, CallPolicy] | None = None,
    default_policy: CallPolicy | None = None,
    follow_policies: bool = True,
    passthrough_hosts: Iterable[str] = (),
    loop: asyncio.AbstractEventLoop | None = None,
    **httpx_options: Any,
) -> httpx2.Client:
    """An `httpx2.Client` over a `CrosswaySyncTransport`, for blocking code in
    threads other than the event loop's. `loop` is the loop the client's
    discovery runs on: default `client.loop` if it has one, else the loop
    running here."""
    code: TransportOptions = {
        "policies": policies,
        "default_policy": default_policy,
        "passthrough_hosts": passthrough_hosts,
    }
    options, pool, rest = client_options(client, follow_policies, code, httpx_options)
    loop = loop or getattr(client, "loop", None)
    inner = httpx2.HTTPTransport(**pool)
    transport = CrosswaySyncTransport(client.discovery, inner=inner, loop=loop, **options)
    return httpx2.Client(transport=transport, **rest)
