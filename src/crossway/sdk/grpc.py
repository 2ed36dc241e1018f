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
- Interceptors for deadlines, tracing, metrics and retries on one channel
  live in grpc_interceptors.py (re-exported here); a pool's channels get
  `default_interceptors` (no retries: the pool retries, on another
  endpoint).

Invariants: a pool call that ends, however it ends, has ended its balancer
call and told the outlier detector (cancellation says nothing about the
endpoint); cancellation is never retried; `close()` leaves no channel open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import grpc
import grpc.aio

from crossway.balance import Endpoint
from crossway.core.clock import Clock
from crossway.registry.model import Instance
from crossway.resilience import (
    deadline_scope,
    remaining_time,
)
from crossway.sdk.grpc_interceptors import (
    UNAVAILABLE,
    Attempt,
    Hook,
    Idempotent,
    Retrier,
    RetryInterceptor,
    client_interceptors,
    deadline_interceptors,
    default_interceptors,
    is_idempotent,
    method_name,
    metrics_interceptors,
    never_sent,
    outcome_of,
    tracing_interceptors,
    when_done,
    with_deadline,
    with_trace,
)
from crossway.sdk.policies import CallPolicy, build_balancer, build_outlier
from crossway.sdk.transport import NoInstancesError, endpoints_of

__all__ = [
    "UNAVAILABLE",
    "Attempt",
    "Balanced",
    "Hook",
    "Idempotent",
    "Retrier",
    "RetryInterceptor",
    "channel_pool",
    "client_interceptors",
    "deadline_interceptors",
    "default_interceptors",
    "is_idempotent",
    "method_name",
    "metrics_interceptors",
    "never_sent",
    "outcome_of",
    "tracing_interceptors",
    "when_done",
    "with_deadline",
    "with_trace",
]


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
