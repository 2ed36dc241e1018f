"""gRPC (`grpc.aio`) support: a balanced pool of per-endpoint channels fed by
discovery, and client interceptors for deadlines, retries, metrics and tracing.

    async with channel_pool(client, "catalog", idempotent={"/shop.Catalog/Get"}) as pool:
        stub = catalog_pb2_grpc.CatalogStub(pool)      # any generated stub
        item = await stub.Get(GetRequest(id=1))        # one instance per call

Theory of operation
-------------------
grpcio has no Python API for custom name resolvers or load-balancing
policies (grpc#11685), so the balancing happens above the channels:

- `Balanced` (made by `channel_pool`) is *channel-like*: it has the four
  `unary_unary` … `stream_stream` factories a generated stub calls, and each
  call it makes picks an endpoint with a balancer from crossway.balance
  (the service's `CallPolicy` names which), then uses that endpoint's own
  `grpc.aio` channel. Channels are made on first use, one per endpoint, and
  closed (after `close_grace` for calls in flight) when discovery says the
  endpoint left. Membership follows `discovery.subscribe`; outlier ejection
  (crossway.balance) takes failing endpoints out of the rotation.
- Unary-request calls are retried on another endpoint (policy `retries`:
  attempts, backoff, budget) when they fail with UNAVAILABLE and either the
  method is idempotent (`idempotent=`: full names, "/pkg.Svc/" prefixes, or
  True for all; or the policy's `non_idempotent`), or the request was
  never sent — the endpoint's channel was not connected when the call
  began and grpc reports it could not connect. Nothing else is retried: a
  status from the server is its answer. Streaming-request calls get one
  attempt (their iterator cannot be replayed). A `timeout=` bounds the whole
  call, retries included; each attempt gets what is left of it and of the
  current deadline.
- Interceptors are plain `grpc.aio` client interceptors, usable on any
  channel. grpc files each interceptor object under one kind only, so every
  concern comes as a list, one object per kind:
    `deadline_interceptors()` — a call without a timeout gets the current
        Deadline's remaining time (crossway.resilience), a longer one is cut;
    `tracing_interceptors()` — `traceparent` (+ `tracestate`) metadata: a
        child of the current trace, or a new trace;
    `metrics_interceptors(registry, …)` — `rpc_client_requests_total` and
        `rpc_client_duration_seconds{service,peer_service,method,code}`;
    `RetryInterceptor` — the retry rule above, on one channel (for channels
        not made by a pool).
  `client_interceptors(client, service)` is all four for a plain channel;
  a pool's channels get `default_interceptors` (no retries: the pool
  retries, on another endpoint).

Invariants: a pool call that ends, however it ends, has ended its balancer
call and told the outlier detector (cancellation says nothing about the
endpoint); cancellation is never retried; `close()` leaves no channel open.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram

from crossway.balance import Endpoint, Outcome
from crossway.core.clock import Clock, SystemClock
from crossway.core.durations import parse_duration
from crossway.registry.model import Instance
from crossway.resilience import (
    Backoff,
    Jitter,
    RetryBudget,
    RetryPolicy,
    deadline_scope,
    remaining_time,
)
from crossway.sdk.policies import CallPolicy, build_balancer, build_outlier
from crossway.sdk.transport import NoInstancesError, endpoints_of
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


# -- the balanced pool -------------------------------------------------------------------------


class _Target(NamedTuple):
    kind: str
    method: str
    serializer: Any
    deserializer: Any
    extra: dict[str, Any]


class _Bound:
    """What the factories return: calling it makes one call through the pool
    (an awaitable for unary_unary, the grpc call object for the others)."""

    def __init__(self, pool: Balanced, target: _Target) -> None:
        self._pool, self._target = pool, target

    def __call__(self, request: Any, **options: Any) -> Any:
        if self._target.kind == "unary_unary":
            return self._pool.call_unary(self._target, request, options)
        return self._pool.call_once(self._target, request, options)


def _factory(kind: str) -> Callable[..., _Bound]:
    def factory(
        pool: Balanced,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        **kwargs: Any,
    ) -> _Bound:
        return _Bound(
            pool, _Target(kind, method, request_serializer, response_deserializer, kwargs)
        )

    factory.__name__ = factory.__qualname__ = kind
    return factory


class Balanced:
    """A channel-like pool over every instance of `service`; see the module header.

    Hand it to a generated stub: `Stub(pool)`. `interceptors` go on every
    endpoint's channel (default: `default_interceptors`); `policy` is the
    service's `CallPolicy` (balancer, retries, outlier ejection); `credentials`
    make secure channels; `channel_options` are grpc channel arguments.
    """

    def __init__(
        self,
        client: Any,
        service: str,
        *,
        interceptors: Iterable[Any] | None = None,
        policy: CallPolicy | None = None,
        idempotent: Idempotent = (),
        credentials: Any = None,
        channel_options: Iterable[tuple[str, Any]] = (),
        close_grace: float = 5.0,
    ) -> None:
        self.client = client
        self.service = service
        self.policy = policy or CallPolicy()
        clock = client.clock
        self.balancer = build_balancer(self.policy, zone=client.settings.zone, clock=clock)
        self.outlier = build_outlier(self.policy, clock=clock)
        self.retrier = Retrier(self.policy, idempotent, clock)
        chosen = default_interceptors(client, service) if interceptors is None else interceptors
        self._interceptors = list(chosen)
        self._credentials = credentials
        self._options = list(channel_options)
        self._grace = close_grace
        self._clock: Clock = clock
        self._endpoints: dict[str, Endpoint] = {}
        self._channels: dict[str, tuple[Endpoint, Any]] = {}
        self._callables: dict[tuple[str, str, str], Any] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._starting: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Balanced:
        """Wait for the first list of instances and follow changes; idempotent.
        Failure and cancellation are as for `DiscoveryCache.instances`; after
        a failure the next call tries again."""
        await asyncio.shield(self._following())
        return self

    def _following(self) -> asyncio.Task[None]:
        if self._starting is None:
            task = self._starting = asyncio.get_running_loop().create_task(self._follow())
            task.add_done_callback(self._followed)
        return self._starting

    def _followed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._starting = None  # retrieved here, raised to whoever awaited it

    async def _follow(self) -> None:
        discovery = self.client.discovery
        self._update(await discovery.instances(self.service))
        self._unsubscribe = discovery.subscribe(self.service, lambda _, found: self._update(found))

    async def close(self) -> None:
        """Stop following discovery and close every channel (calls in flight
        are cancelled); idempotent."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        channels = [channel for _, channel in self._channels.values()]
        self._channels.clear()
        self._callables.clear()
        await asyncio.gather(*(c.close() for c in channels), *self._closing)

    async def __aenter__(self) -> Balanced:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def _update(self, instances: list[Instance]) -> None:
        endpoints = {e.id: e for e in endpoints_of(instances)}
        self._endpoints = endpoints
        self.balancer.update(endpoints.values())
        if self.outlier is not None:
            self.outlier.update(endpoints.values())
        for endpoint_id, (old, _) in list(self._channels.items()):
            now = endpoints.get(endpoint_id)
            if now is None or now.authority != old.authority:
                self._retire(endpoint_id)

    def _retire(self, endpoint_id: str) -> None:
        _, channel = self._channels.pop(endpoint_id)
        for key in [k for k in self._callables if k[0] == endpoint_id]:
            del self._callables[key]
        task = asyncio.get_running_loop().create_task(channel.close(self._grace))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- the channel-like surface a generated stub calls ------------------------------------

    unary_unary = _factory("unary_unary")
    unary_stream = _factory("unary_stream")
    stream_unary = _factory("stream_unary")
    stream_stream = _factory("stream_stream")

    # -- one call -------------------------------------------------------------------------------

    async def call_unary(self, target: _Target, request: Any, options: dict[str, Any]) -> Any:
        """One unary-request call with retries on other endpoints (module header).

        Raises the last attempt's `grpc.aio.AioRpcError`, `NoInstancesError`
        when the service has no instance, or `DeadlineExceeded` when the
        current deadline passed before the call began.
        """
        await self.start()
        timeout = options.pop("timeout", None)
        tried: list[str] = []
        scope = deadline_scope(timeout) if timeout is not None else contextlib.nullcontext()
        with scope:
            last = await self.retrier.run(
                target.method, lambda: self._attempt(target, request, options, tried)
            )
        if isinstance(last, BaseException):
            raise last
        return last

    async def _attempt(
        self, target: _Target, request: Any, options: dict[str, Any], tried: list[str]
    ) -> Attempt:
        endpoint = self._pick(tried, options.get("metadata"))
        tried.append(endpoint.id)
        channel = self._channel(endpoint)
        connected = channel.get_state(False) == grpc.ChannelConnectivity.READY
        call = self.balancer.begin(endpoint)
        try:
            response = await self._callable(endpoint, channel, target)(
                request, timeout=remaining_time(), **options
            )
        except grpc.aio.AioRpcError as exc:
            self._finished(endpoint, call, exc.code())
            unsent = never_sent(exc.code(), exc.details(), connected)
            return Attempt(exc, exc.code() == UNAVAILABLE, unsent)
        except BaseException:
            call.end(ok=False)
            raise
        self._finished(endpoint, call, grpc.StatusCode.OK)
        return Attempt(response)

    def call_once(self, target: _Target, request: Any, options: dict[str, Any]) -> Any:
        """One streaming call on one endpoint: the grpc call object itself."""
        if self._starting is None:  # not started: use what discovery holds, follow from now
            self._update(self.client.discovery.peek(self.service) or [])
            self._following()
        endpoint = self._pick([], options.get("metadata"))
        channel = self._channel(endpoint)
        call = self.balancer.begin(endpoint)
        left = remaining_time()
        if left is not None and (options.get("timeout") is None or options["timeout"] > left):
            options["timeout"] = left
        grpc_call = self._callable(endpoint, channel, target)(request, **options)
        when_done(grpc_call, lambda code, _: self._finished(endpoint, call, code))
        return grpc_call

    def _pick(self, tried: list[str], metadata: Any) -> Endpoint:
        now = self._clock.now()
        if self.outlier is not None:
            self.balancer.set_ejected(self.outlier.ejected(now))
        endpoint = self.balancer.pick(self._hash_key(metadata))
        if endpoint is None:
            raise NoInstancesError(
                f"no instance of {self.service!r} is available", service=self.service
            )
        # A retry should not go back to an endpoint that just failed, but must
        # not spin when every endpoint has been tried.
        for _ in range(min(len(self._endpoints), 4)):
            if endpoint.id not in tried:
                break
            endpoint = self.balancer.pick(None) or endpoint
        return endpoint

    def _hash_key(self, metadata: Any) -> str | None:
        wanted = self.policy.hash_header
        if wanted is None or not metadata:
            return None
        return next((str(v) for k, v in metadata if k == wanted.lower()), None)

    def _finished(self, endpoint: Endpoint, call: Any, code: Any) -> None:
        call.end(ok=code == grpc.StatusCode.OK)
        outcome = outcome_of(code)
        if outcome is not None and self.outlier is not None:
            self.outlier.record(endpoint.id, outcome, self._clock.now())

    def _channel(self, endpoint: Endpoint) -> Any:
        found = self._channels.get(endpoint.id)
        if found is not None:
            return found[1]
        target, options, interceptors = endpoint.authority, self._options, self._interceptors
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(target, options, interceptors=interceptors)
        else:
            channel = grpc.aio.secure_channel(
                target, self._credentials, options, interceptors=interceptors
            )
        self._channels[endpoint.id] = (endpoint, channel)
        return channel

    def _callable(self, endpoint: Endpoint, channel: Any, target: _Target) -> Any:
        key = (endpoint.id, target.kind, target.method)
        found = self._callables.get(key)
        if found is None:
            factory = getattr(channel, target.kind)
            found = factory(target.method, target.serializer, target.deserializer, **target.extra)
            self._callables[key] = found
        return found


channel_pool = Balanced
"""`channel_pool(client, service, *, interceptors=…, policy=…, idempotent=…)`: the
pool of channels to `service` (start it with `async with` or `await
pool.start()`; a unary call also starts it)."""
