"""gRPC (`grpc.aio`) client interceptors — deadlines, tracing, metrics,
retries on one channel — and the pure retry decisions the balanced pool
(grpc.py) shares with them.

Theory of operation
-------------------
Interceptors are plain `grpc.aio` client interceptors, usable on any channel.
grpc files each interceptor object under one kind only, so every concern
comes as a list, one object per kind:
  `deadline_interceptors()` — a call without a timeout gets the current
      Deadline's remaining time (crossway.resilience), a longer one is cut;
  `tracing_interceptors()` — `traceparent` (+ `tracestate`) metadata: a
      child of the current trace, or a new trace;
  `metrics_interceptors(registry, …)` — `rpc_client_requests_total` and
      `rpc_client_duration_seconds{service,peer_service,method,code}`;
  `RetryInterceptor` — the retry rule of grpc.py, on one channel (for
      channels not made by a pool).
`client_interceptors(client, service)` is all four for a plain channel; a
pool's channels get `default_interceptors` (no retries: the pool retries, on
another endpoint). `Retrier` and the functions under "pure decisions" take
statuses and times in and give verdicts out; they do no I/O.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram

from crossway.balance import Outcome
from crossway.core.clock import Clock, SystemClock
from crossway.core.durations import parse_duration
from crossway.resilience import (
    Backoff,
    Jitter,
    RetryBudget,
    RetryPolicy,
    remaining_time,
)
from crossway.sdk.policies import CallPolicy
from crossway.telemetry.metrics import LATENCY_BUCKETS, LabelBudget
from crossway.telemetry.tracecontext import TRACEPARENT, TRACESTATE, TraceContext, current_trace

Hook = Callable[[Any, Any, Any], Awaitable[Any]]
"""`hook(continuation, call_details, request_or_iterator)` -> the call."""
Idempotent = bool | Iterable[str]

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_FAILED = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
_PENDING: set[asyncio.Task[Any]] = set()


# -- pure decisions ------------------------------------------------------------------------


def outcome_of(code: Any) -> Outcome | None:
    """What a status says about the endpoint: UNAVAILABLE is a gateway error,
    INTERNAL/UNKNOWN/DATA_LOSS an error, DEADLINE_EXCEEDED and CANCELLED
    nothing (the caller's budget ran out), anything else a success."""
    if code == UNAVAILABLE:
        return Outcome.GATEWAY_ERROR
    if code in _FAILED:
        return Outcome.ERROR
    if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        return None
    return Outcome.SUCCESS


def method_name(method: str | bytes) -> str:
    return method.decode() if isinstance(method, bytes) else method


def is_idempotent(method: str, idempotent: Idempotent) -> bool:
    """Whether `method` ("/pkg.Svc/Method") is declared idempotent."""
    if isinstance(idempotent, bool):
        return idempotent
    return any(method == n or (n.endswith("/") and method.startswith(n)) for n in idempotent)


def never_sent(code: Any, details: str | None, was_connected: bool) -> bool:
    """UNAVAILABLE from a channel that had no connection and could not make one."""
    return code == UNAVAILABLE and not was_connected and "failed to connect" in (details or "")


class Retrier:
    """The retry rule and its budget (see the module header): `delay` decides
    (pure), `run` is the async loop around it."""

    def __init__(self, policy: CallPolicy, idempotent: Idempotent, clock: Clock) -> None:
        spec = policy.retries
        self.policy: RetryPolicy | None = None
        self.budget: RetryBudget | None = None
        self.idempotent: Idempotent = True if spec and spec.non_idempotent else idempotent
        self.clock = clock
        if spec is None or spec.attempts <= 1:
            return
        backoff = Backoff(
            base=parse_duration(spec.backoff.base),
            cap=parse_duration(spec.backoff.cap),
            jitter=Jitter(spec.backoff.jitter),
        )
        self.policy = RetryPolicy(max_attempts=spec.attempts, backoff=backoff)
        if spec.budget is not None:
            self.budget = RetryBudget(
                ttl=parse_duration(spec.budget.ttl),
                min_retries_per_sec=spec.budget.min_per_second,
                percent_can_retry=spec.budget.percent / 100.0,
                clock=clock,
            )

    def delay(self, method: str, attempts: int, started: float, unsent: bool) -> float | None:
        """Seconds to wait before retrying an UNAVAILABLE attempt, or None: give up."""
        if self.policy is None or not (unsent or is_idempotent(method, self.idempotent)):
            return None
        now = self.clock.now()
        wait = self.policy.next_delay(attempts, elapsed=now - started, remaining=remaining_time())
        if wait is None or (self.budget is not None and not self.budget.try_retry(now)):
            return None
        return wait

    async def run(self, method: str, attempt: Callable[[], Awaitable[Attempt]]) -> Any:
        """Run `attempt()` until it is not UNAVAILABLE or the rule gives up;
        the last attempt's `value` is returned. Cancellation ends it at once."""
        budget = self.budget
        if budget is not None:
            budget.on_request()
        started, attempts, granted = self.clock.now(), 0, False
        try:
            while True:
                attempts += 1
                try:
                    result = await attempt()
                finally:
                    if granted and budget is not None:
                        budget.on_retry_done()
                    granted = False
                if not result.unavailable:
                    return result.value
                wait = self.delay(method, attempts, started, result.unsent)
                if wait is None:
                    return result.value
                granted = True
                await asyncio.sleep(wait)
        finally:
            if budget is not None:
                if granted:
                    budget.on_retry_done()
                budget.on_request_done()


class Attempt(NamedTuple):
    value: Any
    unavailable: bool = False
    unsent: bool = False


# -- interceptors ----------------------------------------------------------------------------


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, hook: Hook) -> None:
        self.hook = hook

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self.hook(continuation, details, request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, hook: Hook) -> None:
        self.hook = hook

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self.hook(continuation, details, request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, hook: Hook) -> None:
        self.hook = hook

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self.hook(continuation, details, requests)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, hook: Hook) -> None:
        self.hook = hook

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self.hook(continuation, details, requests)


def _every_kind(hook: Hook) -> list[Any]:
    return [_UnaryUnary(hook), _UnaryStream(hook), _StreamUnary(hook), _StreamStream(hook)]


def with_deadline(details: Any) -> Any:
    """`details` with its timeout cut to the current deadline's remaining time."""
    left = remaining_time()
    if left is None or (details.timeout is not None and details.timeout <= left):
        return details
    return details._replace(timeout=left)


def with_trace(details: Any) -> Any:
    """`details` with `traceparent` metadata for a child of the current trace
    (or a new trace); a caller's own `traceparent` is left alone."""
    existing = list(details.metadata or ())
    if any(key == TRACEPARENT for key, _ in existing):
        return details
    parent = current_trace()
    ctx = parent.child() if parent is not None else TraceContext.root()
    existing.append((TRACEPARENT, ctx.traceparent()))
    if ctx.tracestate:
        existing.append((TRACESTATE, ",".join(f"{k}={v}" for k, v in ctx.tracestate)))
    return details._replace(metadata=grpc.aio.Metadata(*existing))


async def _deadline_hook(continuation: Any, details: Any, request: Any) -> Any:
    return await continuation(with_deadline(details), request)


async def _trace_hook(continuation: Any, details: Any, request: Any) -> Any:
    return await continuation(with_trace(details), request)


def deadline_interceptors() -> list[Any]:
    """Calls inherit the current deadline (see the module header)."""
    return _every_kind(_deadline_hook)


def tracing_interceptors() -> list[Any]:
    """Calls carry the current trace as `traceparent` metadata."""
    return _every_kind(_trace_hook)


def when_done(call: Any, report: Callable[[Any, float], None]) -> None:
    """`report(status code, seconds since now)` once `call` ends."""
    started = time.perf_counter()

    def done(finished: Any) -> None:
        elapsed = time.perf_counter() - started

        async def read() -> None:
            report(await finished.code(), elapsed)

        _keep(asyncio.get_running_loop().create_task(read()))

    call.add_done_callback(done)


class _RpcMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("service", "peer_service", "method", "code")
        self.requests = Counter(
            "rpc_client_requests", "gRPC calls made, by status code.", labels, registry=registry
        )
        self.duration = Histogram(
            "rpc_client_duration_seconds",
            "Duration of gRPC client calls, as the caller saw them.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.methods = LabelBudget(200)


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _RpcMetrics] = weakref.WeakKeyDictionary()


def metrics_interceptors(
    registry: CollectorRegistry, *, service: str, peer_service: str
) -> list[Any]:
    """Count and time every call (an attempt, under a pool) on `registry`."""
    metrics = _METRICS.get(registry)
    if metrics is None:
        metrics = _METRICS[registry] = _RpcMetrics(registry)
    found = metrics

    async def hook(continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        method = found.methods.admit(method_name(details.method))

        def report(code: Any, seconds: float) -> None:
            labels = (service, peer_service, method, getattr(code, "name", str(code)))
            found.requests.labels(*labels).inc()
            found.duration.labels(*labels).observe(seconds)

        when_done(call, report)
        return call

    return _every_kind(hook)


class RetryInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Retries unary calls on one channel per the rule in the module header."""

    def __init__(
        self,
        *,
        policy: CallPolicy | None = None,
        idempotent: Idempotent = (),
        clock: Clock | None = None,
    ) -> None:
        self.retrier = Retrier(policy or CallPolicy(), idempotent, clock or SystemClock())

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        async def attempt() -> Attempt:
            call = await continuation(details, request)
            if await call.code() != UNAVAILABLE:
                return Attempt(call)
            # Without the channel's state, grpc's own words tell an unsent call.
            unsent = never_sent(UNAVAILABLE, await call.details(), was_connected=False)
            return Attempt(call, unavailable=True, unsent=unsent)

        return await self.retrier.run(method_name(details.method), attempt)


def default_interceptors(client: Any, service: str) -> list[Any]:
    """Deadline, tracing and metrics interceptors for calls from `client` to `service`."""
    caller = client.settings.service or "unknown"
    return [
        *deadline_interceptors(),
        *tracing_interceptors(),
        *metrics_interceptors(client.metrics_registry, service=caller, peer_service=service),
    ]


def client_interceptors(
    client: Any, service: str, *, policy: CallPolicy | None = None, idempotent: Idempotent = ()
) -> list[Any]:
    """Everything for a plain channel to `service`: retries (outermost, so each
    attempt is timed and traced), deadline, tracing and metrics."""
    retry = RetryInterceptor(policy=policy, idempotent=idempotent, clock=client.clock)
    return [retry, *default_interceptors(client, service)]


def _keep(task: asyncio.Task[Any]) -> None:
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)
