"""The Crossway transports for the original httpx (for code that has not
moved to httpx2): the same router, stacks and policies as transport.py,
behind httpx's transport classes and exceptions.

    http = async_httpx_client(client)              # an httpx.AsyncClient
    r = await http.get("http://orders/items/1")

Only the adapter differs: which exceptions mean "the request never left"
(retried for every method) and "the transport failed" (retried for
idempotent methods, counted against the instance), which body type can be
sent again, and how a URL is moved to an instance. Everything else —
resolution, Host semantics, headers, deadlines, cancellation — is exactly
as described in transport.py.

Importing this module without httpx installed raises ImportError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Unpack

import httpx

from crossway.sdk.policies import CallPolicy
from crossway.sdk.transport_core import (
    POOL_OPTIONS,
    Adapter,
    AsyncCore,
    SyncCore,
    TransportOptions,
    make_client,
)
from crossway.sdk.transport_flavor import Flavor, flavor
from crossway.sdk.transport_router import Discovery

__all__ = [
    "HTTPX",
    "POOL_OPTIONS",
    "CrosswayHttpxSyncTransport",
    "CrosswayHttpxTransport",
    "async_httpx_client",
    "sync_httpx_client",
]

HTTPX: Flavor = flavor(
    unsent_errors=(httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout),
    transport_error=httpx.TransportError,
    byte_stream=httpx.ByteStream,
    url_cls=httpx.URL,
    headers_cls=httpx.Headers,
)


class CrosswayHttpxTransport(AsyncCore, httpx.AsyncBaseTransport):
    """`CrosswayTransport` for `httpx.AsyncClient` (default inner:
    `httpx.AsyncHTTPTransport()`); options as `TransportOptions`."""

    def __init__(
        self,
        discovery: Discovery,
        *,
        inner: httpx.AsyncBaseTransport | None = None,
        **options: Unpack[TransportOptions],
    ) -> None:
        self._setup(discovery, HTTPX, inner or httpx.AsyncHTTPTransport(), True, options)


class CrosswayHttpxSyncTransport(SyncCore, httpx.BaseTransport):
    """`CrosswaySyncTransport` for `httpx.Client` (default inner:
    `httpx.HTTPTransport()`); see `SyncCore` for `loop` and `resolve_timeout`."""

    def __init__(
        self,
        discovery: Discovery,
        *,
        inner: httpx.BaseTransport | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        resolve_timeout: float = 10.0,
        **options: Unpack[TransportOptions],
    ) -> None:
        self._setup(discovery, HTTPX, inner or httpx.HTTPTransport(), False, options)
        self._bind(loop, resolve_timeout)


_ASYNC = Adapter(httpx.AsyncHTTPTransport, CrosswayHttpxTransport, httpx.AsyncClient, True)
_SYNC = Adapter(httpx.HTTPTransport, CrosswayHttpxSyncTransport, httpx.Client, False)


def async_httpx_client(
    client: Any,
    *,
    policies: Mapping[str, CallPolicy] | None = None,
    default_policy: CallPolicy | None = None,
    follow_policies: bool = True,
    passthrough_hosts: Iterable[str] = (),
    **httpx_options: Any,
) -> httpx.AsyncClient:
    """`transport.async_client`, returning an `httpx.AsyncClient`."""
    plan = (policies, default_policy, follow_policies, passthrough_hosts, None)
    made: httpx.AsyncClient = make_client(client, _ASYNC, plan, httpx_options)
    return made


def sync_httpx_client(
    client: Any,
    *,
    policies: Mapping[str, CallPolicy] | None = None,
    default_policy: CallPolicy | None = None,
    follow_policies: bool = True,
    passthrough_hosts: Iterable[str] = (),
    loop: asyncio.AbstractEventLoop | None = None,
    **httpx_options: Any,
) -> httpx.Client:
    """`transport.sync_client`, returning an `httpx.Client`."""
    plan = (policies, default_policy, follow_policies, passthrough_hosts, loop)
    made: httpx.Client = make_client(client, _SYNC, plan, httpx_options)
    return made
