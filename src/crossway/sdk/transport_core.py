"""What every Crossway transport class shares, whatever its HTTP library:
the router, the policy book and the control-plane follower, the async and
blocking entry points, and the making of a client for a crossway `Client`.

Theory of operation
-------------------
A request whose host has a folded call goes to it; a host known not to be a
service goes straight to the inner transport; any other host is resolved
once (transport_router.py). The control-plane policy follower starts from
the first request to a service, in the running loop, never at construction,
which may precede a fork. A blocking transport resolves a new service on the
client's event loop and later calls use what that loop keeps current.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, NamedTuple, TypedDict

from crossway.core.clock import Clock, SystemClock
from crossway.sdk.policies import (
    CallPolicy,
    PolicyBook,
    PolicySource,
    follow_control_plane,
)
from crossway.sdk.telemetry import ServiceTelemetry
from crossway.sdk.transport_flavor import Flavor
from crossway.sdk.transport_router import Discovery, Router
from crossway.sdk.transport_stack import NoInstancesError


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

    def handle_async_request(self, request: Any) -> Coroutine[Any, Any, Any]:
        """Send `request` (await the result); see transport.py's module
        header for what happens to it.

        Raises what the inner transport raises (after retries), and
        `NoInstancesError`, `CircuitOpenError`, `BulkheadFullError` or
        `DeadlineExceeded` (all `CrosswayError`s). Cancellation propagates
        after every resource the call held is released.
        """
        # A plain function handing back the folded call's coroutine: one
        # coroutine less per request, to create and to pass through on
        # every wake-up of the exchange.
        router = self.router
        host = request.url.host
        call = router.stacks.get(host)
        if call is not None:
            return call(request)  # type: ignore[no-any-return]
        if host in router.plain:
            return self.inner.handle_async_request(request)  # type: ignore[no-any-return]
        return self._resolve_and_send(host, request)

    async def _resolve_and_send(self, host: str, request: Any) -> Any:
        self._follow_policies(asyncio.get_running_loop())
        call = await self.router.resolve(host)
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


class Adapter(NamedTuple):
    """One HTTP client library's classes, for `make_client`."""

    inner: Callable[..., Any]  # the pooled transport class: (**pool options) -> transport
    transport: Callable[..., Any]  # the Crossway transport class
    client: Callable[..., Any]  # the httpx client class
    is_async: bool


ClientPlan = tuple[
    Mapping[str, CallPolicy] | None,  # policies
    CallPolicy | None,  # default_policy
    bool,  # follow_policies
    Iterable[str],  # passthrough_hosts
    asyncio.AbstractEventLoop | None,  # loop (blocking clients)
]
"""The arguments of `transport.async_client` and its siblings, in order."""


def make_client(
    client: Any, adapter: Adapter, plan: ClientPlan, httpx_options: Mapping[str, Any]
) -> Any:
    """An httpx(2) client over a Crossway transport for a crossway `Client`
    (see `transport.async_client`): pool options configure the inner
    transport, the others go to the client; a blocking one uses `loop`,
    default `client.loop` when it has one."""
    policies, default_policy, follow_policies, passthrough_hosts, loop = plan
    code: TransportOptions = {
        "policies": policies,
        "default_policy": default_policy,
        "passthrough_hosts": passthrough_hosts,
    }
    options, pool, rest = client_options(client, follow_policies, code, httpx_options)
    inner = adapter.inner(**pool)
    if adapter.is_async:
        transport = adapter.transport(client.discovery, inner=inner, **options)
    else:
        loop = loop or getattr(client, "loop", None)
        transport = adapter.transport(client.discovery, inner=inner, loop=loop, **options)
    return adapter.client(transport=transport, **rest)
