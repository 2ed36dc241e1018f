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
(policies.py) and rebuilt only when that policy changes; the per-request
path is a dict lookup and calls into ready objects (linkerd2-proxy's
layers). The machinery lives in one module per idea, all re-exported here:

    transport_flavor   what differs between httpx2 and httpx; URL/header fast paths
    transport_stack    one service's call plan and the steps of a call and an attempt
    transport_drive    deadline -> bulkhead -> breaker -> retries -> attempt, folded
    transport_router   which hosts are services; their stacks, fed by discovery
    transport_core     what every transport class shares; clients for a `Client`

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

Invariants (held by transport_drive and transport_stack)
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
from collections.abc import Iterable, Mapping
from typing import Any, Unpack

import httpx2

from crossway.sdk.policies import CallPolicy
from crossway.sdk.transport_core import (
    POOL_OPTIONS,
    Adapter,
    AsyncCore,
    SyncCore,
    TransportOptions,
    client_options,
    make_client,
)
from crossway.sdk.transport_flavor import Flavor, HeaderOps, flavor, header_ops, url_rewriter
from crossway.sdk.transport_router import Discovery, Router, is_service_host
from crossway.sdk.transport_stack import (
    DEADLINE_HEADER,
    IDEMPOTENT,
    NoInstancesError,
    ServiceStack,
    endpoints_of,
)

__all__ = [
    "DEADLINE_HEADER",
    "HTTPX2",
    "IDEMPOTENT",
    "POOL_OPTIONS",
    "AsyncCore",
    "CrosswaySyncTransport",
    "CrosswayTransport",
    "Discovery",
    "Flavor",
    "HeaderOps",
    "NoInstancesError",
    "Router",
    "ServiceStack",
    "SyncCore",
    "TransportOptions",
    "async_client",
    "client_options",
    "endpoints_of",
    "flavor",
    "header_ops",
    "is_service_host",
    "sync_client",
    "url_rewriter",
]

HTTPX2 = flavor(
    unsent_errors=(httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout),
    transport_error=httpx2.TransportError,
    byte_stream=httpx2.ByteStream,
    url_cls=httpx2.URL,
    headers_cls=httpx2.Headers,
)


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

_ASYNC = Adapter(httpx2.AsyncHTTPTransport, CrosswayTransport, httpx2.AsyncClient, True)
_SYNC = Adapter(httpx2.HTTPTransport, CrosswaySyncTransport, httpx2.Client, False)


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
    plan = (policies, default_policy, follow_policies, passthrough_hosts, None)
    made: httpx2.AsyncClient = make_client(client, _ASYNC, plan, httpx_options)
    return made


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
    plan = (policies, default_policy, follow_policies, passthrough_hosts, loop)
    made: httpx2.Client = make_client(client, _SYNC, plan, httpx_options)
    return made
