# What a route's forwarding plan is, and what its retries allow.
#
# Theory of operation
# -------------------
# `Gateway` folds each compiled route once into a `RoutePlan` (its header
# edits, attempts, retried statuses, timeouts, budgets, rate limit, and the
# one backend of a route whose decision never varies). The functions here
# are the pure rules the gateway's attempts follow: which failures and
# statuses may be retried for which requests, and how long each attempt may
# wait. Nothing here does I/O or keeps state.
#
# Invariants
# ----------
# - A request with a body is retried only after a connect failure (nothing
#   was sent); an answer is dropped for another attempt only for bodiless,
#   idempotent requests that are not upgrades.
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from crossway.proxy.errors import GatewayError, UpstreamConnectFailed, UpstreamTimeout
from crossway.proxy.headers import Headers
from crossway.proxy.overload import RetryGate
from crossway.proxy.ratelimit import RouteLimit
from crossway.proxy.routes.actions import RouteActions, response_headers
from crossway.proxy.routes.model import Backend, Duration, Route, seconds
from crossway.proxy.stream import Stream

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


def may_retry(stream: Stream, route: Route, error: GatewayError) -> bool:
    conditions = route.retries.conditions
    if isinstance(error, UpstreamConnectFailed):
        return "connect-failure" in conditions or "gateway-error" in conditions
    head = stream.head
    idempotent = head.method in IDEMPOTENT or route.retries.non_idempotent
    if isinstance(error, UpstreamTimeout):  # a per-try timeout, as Envoy's retry_on
        wanted = "5xx" in conditions or "gateway-error" in conditions
    else:
        wanted = "reset" in conditions
    return idempotent and not head.has_body and wanted


def attempt_timeout(plan: RoutePlan, remaining: float) -> tuple[float, bool]:
    """The wait for this attempt's answer, and whether it is the overall
    deadline's rest (no retry after it) rather than the per-try timeout."""
    if remaining <= 0:
        raise UpstreamTimeout(f"no response within {plan.timeout:g}s", reason="timeout")
    per_try = plan.per_try
    if per_try is not None and per_try < remaining:
        return per_try, False
    return remaining, True


@functools.lru_cache(maxsize=256)
def duration_seconds(duration: Duration) -> float:
    # Parsed once per distinct string, not per request (routes are validated,
    # so this cannot fail).
    return seconds(duration, "timeout")


NO_STATUSES: frozenset[int] = frozenset()
_GATEWAY_ERRORS = frozenset({502, 503, 504})
_ALL_5XX = frozenset(range(500, 600))


def may_retry_status(stream: Stream, route: Route) -> bool:
    """Whether an answer may be dropped for another attempt: only for
    bodiless idempotent requests (the body was streamed and is gone) and
    never for upgrades."""
    head = stream.head
    idempotent = head.method in IDEMPOTENT or route.retries.non_idempotent
    return idempotent and not head.has_body and head.upgrade is None


def retried_statuses(route: Route) -> frozenset[int]:
    """The statuses the route retries (for requests `may_retry_status` allows)."""
    retries = route.retries
    statuses: set[int] = set()
    if "5xx" in retries.conditions:
        statuses |= _ALL_5XX
    if "gateway-error" in retries.conditions:
        statuses |= _GATEWAY_ERRORS
    if "retriable-status" in retries.conditions:
        statuses.update(retries.statuses)
    return frozenset(statuses)


def plain_backend(actions: RouteActions) -> Backend | None:
    """See `RoutePlan.plain`."""
    backends = actions.split.backends
    varies = (
        actions.cors is not None
        or actions.fault is not None
        or actions.redirect is not None
        or actions.direct is not None
        or actions.mirror is not None
        or actions.header_routes
        or actions.rewrite_parts is not None
        or actions.rewrite_prefix is not None
    )
    return backends[0] if len(backends) == 1 and not varies else None


class Edits(NamedTuple):
    """A route's header changes; `response` is per request when
    `needs_origin` (CORS answers depend on the request's Origin)."""

    extra: Headers
    drop: frozenset[bytes]
    response: Callable[[Headers], Headers] | None
    needs_origin: bool


class RoutePlan(NamedTuple):
    """What forwarding needs of one compiled route (`Gateway._plan`)."""

    edits: Edits
    attempts: int
    retry_statuses: frozenset[int]
    timeout: float
    """The overall deadline across attempts, in seconds."""
    per_try: float | None
    budgets: dict[str, RetryGate]
    limit: RouteLimit | None
    plain: Backend | None
    """The one backend when the route's decision never varies (no CORS,
    fault, redirect, direct answer, mirror, header routes or rewrite, one
    backend): the request is forwarded to it as sent, without `decide`."""
    idle_timeout: float
    """The route's `idle_timeout` (the gateway default without one), in seconds."""


def route_edits(actions: RouteActions) -> Edits:
    editor = actions.request_headers
    extra: Headers = []
    drop: frozenset[bytes] = frozenset()
    if editor is not None:
        # The editor's set/add lists are fixed per route; the client's fields
        # it removes or replaces are dropped on the way upstream.
        extra = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in (*editor.set, *editor.add)]
        drop = frozenset(n.encode("latin-1") for n in editor.drop)
    needs_origin = actions.response_headers is not None or actions.cors is not None
    return Edits(extra, drop, None, needs_origin)


def response_edit(actions: RouteActions, stream: Stream) -> Callable[[Headers], Headers] | None:
    if actions.response_headers is None and actions.cors is None:
        return None
    origin = next((v.decode("latin-1") for n, v in stream.head.headers if n == b"origin"), None)

    def edit(headers: Headers) -> Headers:
        text = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
        edited = response_headers(actions, text, origin)
        return [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in edited]

    return edit
