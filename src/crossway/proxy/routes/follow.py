"""Following the control plane's routes and call policies: a new
`GatewayConfig` per change.

Theory of operation
-------------------
`RouteBook` is the pure half: the routes and the call policies
(`/policies/{service}`, crossway.traffic.policy) as the control plane last
told them, and the store revision they reflect. It takes a listing
(`GET /v1/routes`, `GET /v1/policies`) whole, then watch events
(`put`/`delete` of `/routes/{name}` or `/policies/{name}`) one at a time,
and makes a `GatewayConfig` snapshot on demand (version: the revision),
compiling the table once per snapshot.

`follow_control_plane(source, publish)` is the I/O half, run once per
document kind side by side: list, publish a snapshot, then watch
`GET /v1/watch?prefix=/routes/&after=<index>` (`/policies/` likewise) and
publish a new snapshot each time a store revision is complete (the SSE event
that carries an `id`), so a change of several routes in one transaction
becomes one swap, never a half-applied table. A broken stream or an
unreachable control plane is retried with backoff while the last published
configuration stays in force; a `compacted` event means events were lost,
and that kind is listed again from scratch.

Invariants
----------
- Every published snapshot holds only valid routes and policies: a document
  the gateway cannot read (a newer schema) is logged and its previous
  version, if any, is kept.
- Snapshots are published in revision order, each at most once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgspec

from crossway.core.errors import InvalidArgument
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import ROUTE_PREFIX, Route, decode_route
from crossway.resilience import Backoff, Jitter
from crossway.traffic.policy import POLICY_PREFIX, CallPolicy, decode_policy

log = logging.getLogger("crossway.proxy.routes")

RECONNECT = Backoff(base=0.2, cap=10.0, jitter=Jitter.EQUAL)


class RouteSource(Protocol):
    """What following needs of `crossway.sdk.control.ControlPlane`."""

    async def request(self, method: str, path: str, **kwargs: Any) -> Any: ...

    def sse(
        self, path: str, params: Mapping[str, str | int] | None = None
    ) -> AsyncIterator[Any]: ...


class RouteBook:
    """The control plane's routes as last heard (see the module header)."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.policies: dict[str, CallPolicy] = {}
        self.revision = 0
        self._last: GatewayConfig | None = None

    def replace(self, documents: Mapping[str, bytes], revision: int) -> None:
        """Take a whole listing: `documents` maps names to stored JSON."""
        routes: dict[str, Route] = {}
        for name, raw in documents.items():
            route = _readable(name, raw) or self.routes.get(name)
            if route is not None:
                routes[name] = route
        self.routes = routes
        self.revision = max(self.revision, revision)

    def replace_policies(self, documents: Mapping[str, bytes], revision: int) -> None:
        """Take a whole listing of call policies (names to stored JSON)."""
        policies: dict[str, CallPolicy] = {}
        for name, raw in documents.items():
            policy = _readable_policy(name, raw) or self.policies.get(name)
            if policy is not None:
                policies[name] = policy
        self.policies = policies
        self.revision = max(self.revision, revision)

    def apply_event(self, kind: str, data: str) -> bool:
        """Apply one watch event; whether it was about a route or a policy."""
        try:
            body = msgspec.json.decode(data)
            key = str(body["key"])
        except (msgspec.DecodeError, KeyError, TypeError):
            return False
        if key.startswith(ROUTE_PREFIX):
            book: dict[str, Any] = self.routes
            read: Callable[[str, bytes], Any] = _readable
            name = key.removeprefix(ROUTE_PREFIX)
        elif key.startswith(POLICY_PREFIX):
            book, read, name = self.policies, _readable_policy, key.removeprefix(POLICY_PREFIX)
        else:
            return False
        if not name or "/" in name:
            return False
        self.revision = max(self.revision, _int(body.get("revision")))
        if kind == "delete":
            book.pop(name, None)
        elif kind == "put" and "encoding" not in body:
            document = read(name, str(body.get("value", "")).encode())
            if document is not None:
                book[name] = document
        return True

    def snapshot(self) -> GatewayConfig:
        """The routes and policies as a configuration; unchanged routes keep
        their compiled form from the previous snapshot."""
        self._last = GatewayConfig(
            self.routes, str(self.revision), policies=self.policies, previous=self._last
        )
        return self._last


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _readable(name: str, raw: bytes) -> Route | None:
    try:
        return decode_route(raw)
    except InvalidArgument as exc:
        log.warning("route %r from the control plane ignored: %s", name, exc.message)
        return None


def _readable_policy(name: str, raw: bytes) -> CallPolicy | None:
    try:
        return decode_policy(raw)
    except InvalidArgument as exc:
        log.warning("call policy %r from the control plane ignored: %s", name, exc.message)
        return None


class _Listing(msgspec.Struct):
    name: str
    route: msgspec.Raw


class _PolicyListing(msgspec.Struct):
    name: str
    policy: msgspec.Raw


_listing = msgspec.json.Decoder(list[_Listing])
_policy_listing = msgspec.json.Decoder(list[_PolicyListing])


async def follow_control_plane(
    source: RouteSource, publish: Callable[[GatewayConfig], None]
) -> None:
    """Call `publish` with each new configuration until cancelled.

    Never returns on its own; failures are logged once per outage and retried
    with backoff, and nothing is published meanwhile (the last configuration
    stays). Cancellation closes the streams and propagates. An exception from
    `publish` counts as a failure of the stream (it is listed again).
    """
    book = RouteBook()
    async with asyncio.TaskGroup() as group:
        group.create_task(_follow(book, source, publish, _list, ROUTE_PREFIX, "routes"))
        group.create_task(
            _follow(book, source, publish, _list_policies, POLICY_PREFIX, "call policies")
        )


Lister = Callable[[RouteBook, RouteSource], Awaitable[int]]


async def _follow(
    book: RouteBook,
    source: RouteSource,
    publish: Callable[[GatewayConfig], None],
    list_kind: Lister,
    prefix: str,
    what: str,
) -> None:
    failures = 0
    while True:
        try:
            index = await list_kind(book, source)
            publish(book.snapshot())
            if failures:
                log.warning("%s: following the control plane again", what)
            failures = 0
            await _watch(book, source, index, publish, prefix)
        except Exception as exc:
            if failures == 0:
                log.warning(
                    "%s: cannot follow the control plane (%s); "
                    "keeping the last configuration and retrying",
                    what,
                    exc,
                )
            failures += 1
        await asyncio.sleep(RECONNECT.delay(failures, rand=random.random))


async def _list(book: RouteBook, source: RouteSource) -> int:
    response = await source.request("GET", "/v1/routes")
    entries = _listing.decode(response.content)
    index = _index(response)
    book.replace({e.name: bytes(e.route) for e in entries}, index)
    return index


async def _list_policies(book: RouteBook, source: RouteSource) -> int:
    response = await source.request("GET", "/v1/policies")
    entries = _policy_listing.decode(response.content)
    index = _index(response)
    book.replace_policies({e.name: bytes(e.policy) for e in entries}, index)
    return index


def _index(response: Any) -> int:
    raw = response.headers.get("X-Crossway-Index", "")
    return int(raw) if raw.isdigit() else 0


async def _watch(
    book: RouteBook,
    source: RouteSource,
    index: int,
    publish: Callable[[GatewayConfig], None],
    prefix: str = ROUTE_PREFIX,
) -> None:
    params: dict[str, str | int] = {"prefix": prefix, "after": index}
    changed = False
    async for event in source.sse("/v1/watch", params):
        if event.event == "compacted":
            return  # events were lost: list again
        changed = book.apply_event(event.event, event.data) or changed
        if changed and event.id is not None:
            publish(book.snapshot())
            changed = False
