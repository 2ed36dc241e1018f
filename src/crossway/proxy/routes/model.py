"""The route document: what the gateway does with the requests it matches.

A route is one msgspec Struct tree, the same document in a YAML file, at the
control plane's key `/routes/{name}` and in Python. The smallest useful one:

    {"match": {"path_prefix": "/orders"},
     "backends": [{"service": "orders", "weight": 90},
                  {"service": "orders-canary", "weight": 10}],
     "timeout": "5s", "retries": {"attempts": 2}}

Theory of operation
-------------------
Decoding checks the shape (unknown fields, wrong types: msgspec); then
`check_route` checks the meaning (durations parse, percentages and statuses
in range, regexes compile, exactly one way of answering). Both raise
`InvalidArgument` whose `field` is the JSON path of the culprit
(`$.backends[1].weight`), so the control plane's 400 and the YAML loader's
message point at the same place. `__post_init__` runs the check, so a `Route`
that exists is valid — whether built in code or decoded.

A route answers in exactly one way: forward to `backends` (optionally chosen
by `header_routes` first), `redirect`, or `direct_response`. Everything else
(rewrite, header edits, CORS, faults, mirroring, limits, timeouts, retries)
modifies the forwarding; CORS and faults also apply to the two local answers.

Invariants
----------
- A `Route` that exists is valid (see above); compiling it cannot fail.
- At least one backend of every backend list has a weight above zero.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from crossway.core.errors import InvalidArgument
from crossway.core.validation import convert_document, decode_document, duration_at
from crossway.core.validation import field_error as _fail
from crossway.core.validation import within as _within
from crossway.resilience import parse_rate

Duration = str | float
BalancerName = Literal["round_robin", "least_request", "peak_ewma", "ring_hash", "maglev"]
RetryCondition = Literal["connect-failure", "reset", "5xx", "gateway-error", "retriable-status"]
ROUTE_PREFIX = "/routes/"
MAX_WEIGHT = 1_000_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_METHOD = re.compile(r"^[A-Z]+$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class _Spec(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    """Frozen (shareable between workers' tables), strict (a misspelt field is
    an error, not a silently ignored setting), encoded without defaults."""


class HeaderMatch(_Spec, frozen=True):
    """One header condition. Give at most one of `exact`, `prefix`, `regex`;
    none of them means "present". `invert` turns the condition around (with
    none given: the header must be absent). Names are case-insensitive."""

    name: str
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None
    invert: bool = False


class QueryMatch(_Spec, frozen=True):
    """One query-parameter condition: `exact` or `regex` on the first value
    of `name`, or (neither) that the parameter is present."""

    name: str
    exact: str | None = None
    regex: str | None = None


class RouteMatch(_Spec, frozen=True):
    """Which requests the route takes. At most one of `path` (exact),
    `path_prefix` (on segment boundaries: "/orders" takes "/orders" and
    "/orders/1", not "/ordersx") and `path_regex` (whole path; named groups
    are captures for `rewrite.path`); none means every path. `host` is exact
    or a "*.example.com" wildcard (any non-empty label prefix), port ignored."""

    path: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    host: str | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[QueryMatch, ...] = ()


class Backend(_Spec, frozen=True):
    """A service from the registry and its share of the traffic (weights are
    relative: 90/10 and 9/1 split alike; 0 takes none)."""

    service: str
    weight: int = 1


class HeaderRoute(_Spec, frozen=True):
    """Header-based routing (A/B tests, dark launches): when every condition
    of `headers` holds, `backends` replace the route's own."""

    headers: tuple[HeaderMatch, ...]
    backends: tuple[Backend, ...]


class Mirror(_Spec, frozen=True):
    """Copy `percent` of the requests to `service`; its answers are discarded."""

    service: str
    percent: float = 100.0


class Rewrite(_Spec, frozen=True):
    """`prefix` replaces the matched `path_prefix` ("" strips it); `path`
    replaces the whole path, with `{name}` for the regex's named captures."""

    prefix: str | None = None
    path: str | None = None


class HeaderEdits(_Spec, frozen=True):
    """`set` replaces (or adds) headers, `add` appends a value, `remove` drops."""

    set: dict[str, str] = {}
    add: dict[str, str] = {}
    remove: tuple[str, ...] = ()


class Redirect(_Spec, frozen=True):
    """Answer with a redirect; each part not given keeps the request's (a new
    `host` or `scheme` drops the request's port unless `port` is given too)."""

    scheme: Literal["http", "https"] | None = None
    host: str | None = None
    port: int | None = None
    path: str | None = None
    strip_query: bool = False
    status: int = 302


class DirectResponse(_Spec, frozen=True):
    """Answer from the gateway itself."""

    status: int = 200
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


class Cors(_Spec, frozen=True):
    """CORS: preflights answered by the gateway, headers added to answers.
    `allow_origins` holds origins or "*"."""

    allow_origins: tuple[str, ...] = ("*",)
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: Duration = "10m"
    allow_credentials: bool = False


class FaultDelay(_Spec, frozen=True):
    duration: Duration
    percent: float = 100.0


class FaultAbort(_Spec, frozen=True):
    status: int = 503
    percent: float = 100.0


class Fault(_Spec, frozen=True):
    """Fault injection for resilience testing: delay and/or abort a share of
    the requests before they are forwarded."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


class RetryBudget(_Spec, frozen=True):
    """Retries limited to `percent` of recent requests (over `ttl`) plus
    `min_per_second`, so a failing upstream is not hit with a retry storm."""

    percent: float = 20.0
    min_per_second: float = 10.0
    ttl: Duration = "10s"


class RateLimit(_Spec, frozen=True):
    """Requests allowed per `key` (GCRA): `rate` ("100/s", "5/m" or a number
    per second) with `burst` at once (default: one second's worth).
    `key` is "client_ip", "route" (one budget for the route) or
    "header:NAME" (requests without the header share one budget).
    `scope` "local" counts in each gateway process (at most `max_keys`
    keys, least recently seen forgotten first); "global" counts on the
    gateway's Redis, shared by every gateway that has the same route."""

    rate: str | float
    burst: int | None = None
    key: str = "client_ip"
    scope: Literal["local", "global"] = "local"
    max_keys: int = 10_000


class Retries(_Spec, frozen=True):
    """`attempts` counts every try, the first included. A request is retried
    on the `conditions` (see retry.py); a status in `statuses` is always
    retriable.
    (Not `on`, the usual name: YAML 1.1 reads an unquoted `on` key as true.)
    Only idempotent methods are retried unless `non_idempotent` (a connect
    failure, where nothing was sent, is retried for every method)."""

    attempts: int = 1
    conditions: tuple[RetryCondition, ...] = ("connect-failure", "reset", "gateway-error")
    statuses: tuple[int, ...] = ()
    non_idempotent: bool = False
    per_try_timeout: Duration | None = None
    budget: RetryBudget | None = RetryBudget()


class Route(_Spec, frozen=True):
    """One route; see the module header. `timeout` bounds the whole exchange
    (retries included), `idle_timeout` a silence in either direction,
    `max_request_bytes` the request body (413 beyond it), `rate_limit` how
    many requests it takes (429 beyond it)."""

    match: RouteMatch = RouteMatch()
    backends: tuple[Backend, ...] = ()
    header_routes: tuple[HeaderRoute, ...] = ()
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    mirror: Mirror | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderEdits | None = None
    response_headers: HeaderEdits | None = None
    cors: Cors | None = None
    fault: Fault | None = None
    max_request_bytes: int | None = None
    balancer: BalancerName = "round_robin"
    hash_header: str | None = None
    timeout: Duration | None = None
    idle_timeout: Duration | None = None
    retries: Retries = Retries()
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        check_route(self)


# -- validation -------------------------------------------------------------------------


def seconds(value: Duration, field: str, *, positive: bool = False) -> float:
    """`value` in seconds; InvalidArgument naming `field` when it does not parse."""
    return duration_at(value, field, positive=positive)


def _regex(pattern: str | None, field: str) -> None:
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _fail(field, f"not a valid regular expression: {exc}") from None


def _path(value: str | None, field: str) -> None:
    if value is not None and not value.startswith("/"):
        raise _fail(field, f"must start with '/', got {value!r}")


def _header_name(name: str, field: str) -> None:
    if not _HEADER_NAME.match(name):
        raise _fail(field, f"not a valid header name: {name!r}")


def check_route_name(name: str, field: str = "name") -> str:
    """`name` when it can name a route (letters, digits, `._-`, up to 128)."""
    if not _NAME.match(name):
        raise InvalidArgument(
            f"{field}: a route name is 1-128 letters, digits, '.', '_' or '-' "
            f"starting with a letter or digit, got {name!r}",
            field=field,
        )
    return name


def check_route(route: Route) -> None:
    """Raise InvalidArgument naming the first field that is wrong (`$.a[1].b`)."""
    _check_match(route.match, "$.match")
    _check_answer(route)
    _check_backends(route.backends, "$.backends", required=False)
    for i, rule in enumerate(route.header_routes):
        _check_headers(rule.headers, f"$.header_routes[{i}].headers")
        _check_backends(rule.backends, f"$.header_routes[{i}].backends", required=True)
    _check_modifiers(route)
    _check_limits(route)
    _check_retries(route.retries, "$.retries")
    if route.rate_limit is not None:
        _check_rate_limit(route.rate_limit, "$.rate_limit")


def _check_match(match: RouteMatch, at: str) -> None:
    given = [n for n in ("path", "path_prefix", "path_regex") if getattr(match, n) is not None]
    if len(given) > 1:
        raise _fail(f"{at}.{given[1]}", "give only one of path, path_prefix, path_regex")
    _path(match.path, f"{at}.path")
    _path(match.path_prefix, f"{at}.path_prefix")
    _regex(match.path_regex, f"{at}.path_regex")
    if match.host is not None and not _valid_host(match.host):
        raise _fail(f"{at}.host", f"must be a host name or *.domain, got {match.host!r}")
    for i, method in enumerate(match.methods):
        if not _METHOD.match(method):
            raise _fail(f"{at}.methods[{i}]", f"must be an upper-case method, got {method!r}")
    _check_headers(match.headers, f"{at}.headers")
    for i, query in enumerate(match.query):
        if query.exact is not None and query.regex is not None:
            raise _fail(f"{at}.query[{i}].regex", "give only one of exact, regex")
        _regex(query.regex, f"{at}.query[{i}].regex")


def _valid_host(host: str) -> bool:
    bare = host[2:] if host.startswith("*.") else host
    return bool(bare) and "*" not in bare and "/" not in bare and ":" not in bare


def _check_headers(headers: tuple[HeaderMatch, ...], at: str) -> None:
    for i, header in enumerate(headers):
        _header_name(header.name, f"{at}[{i}].name")
        given = [n for n in ("exact", "prefix", "regex") if getattr(header, n) is not None]
        if len(given) > 1:
            raise _fail(f"{at}[{i}].{given[1]}", "give only one of exact, prefix, regex")
        _regex(header.regex, f"{at}[{i}].regex")


def _check_answer(route: Route) -> None:
    answers = [n for n in ("redirect", "direct_response") if getattr(route, n) is not None]
    if route.backends:
        answers.insert(0, "backends")
    if not answers:
        raise _fail("$.backends", "a route needs backends, a redirect or a direct_response")
    if len(answers) > 1:
        raise _fail(f"$.{answers[1]}", f"a route answers one way; it already has {answers[0]}")
    if route.header_routes and not route.backends:
        raise _fail("$.header_routes", "needs the route's own backends as the default")
    if route.redirect is not None:
        _check_redirect(route.redirect, "$.redirect")
    if route.direct_response is not None:
        _within(route.direct_response.status, "$.direct_response.status", 200, 599)


def _check_redirect(redirect: Redirect, at: str) -> None:
    if redirect.status not in _REDIRECT_STATUSES:
        raise _fail(f"{at}.status", f"must be one of {_REDIRECT_STATUSES}")
    if redirect.port is not None:
        _within(redirect.port, f"{at}.port", 1, 65535)
    _path(redirect.path, f"{at}.path")
    if redirect.host is not None and not _valid_host(redirect.host):
        raise _fail(f"{at}.host", f"must be a host name, got {redirect.host!r}")


def _check_backends(backends: tuple[Backend, ...], at: str, *, required: bool) -> None:
    if required and not backends:
        raise _fail(at, "needs at least one backend")
    for i, backend in enumerate(backends):
        if not backend.service.strip():
            raise _fail(f"{at}[{i}].service", "must name a service")
        _within(backend.weight, f"{at}[{i}].weight", 0, MAX_WEIGHT)
    if backends and not any(b.weight for b in backends):
        raise _fail(at, "at least one backend needs a weight above zero")


def _check_modifiers(route: Route) -> None:
    if route.mirror is not None:
        if not route.mirror.service.strip():
            raise _fail("$.mirror.service", "must name a service")
        _within(route.mirror.percent, "$.mirror.percent", 0, 100)
    if route.rewrite is not None:
        _check_rewrite(route.rewrite, route.match)
    for name in ("request_headers", "response_headers"):
        edits: HeaderEdits | None = getattr(route, name)
        if edits is not None:
            _check_edits(edits, f"$.{name}")
    if route.cors is not None:
        seconds(route.cors.max_age, "$.cors.max_age")
    if route.fault is not None:
        _check_fault(route.fault, "$.fault")


def _check_rewrite(rewrite: Rewrite, match: RouteMatch) -> None:
    if rewrite.prefix is not None and rewrite.path is not None:
        raise _fail("$.rewrite.path", "give only one of prefix, path")
    if rewrite.prefix is not None and match.path_prefix is None:
        raise _fail("$.rewrite.prefix", "needs match.path_prefix to replace")
    _path(rewrite.path, "$.rewrite.path")
    if rewrite.path is not None:
        known = set(re.compile(match.path_regex).groupindex) if match.path_regex else set()
        for name in re.findall(r"\{(\w+)\}", rewrite.path):
            if name not in known:
                raise _fail("$.rewrite.path", f"{{{name}}} is not a named group of path_regex")


def _check_edits(edits: HeaderEdits, at: str) -> None:
    for kind in ("set", "add"):
        for name in getattr(edits, kind):
            _header_name(name, f"{at}.{kind}.{name}")
    for i, name in enumerate(edits.remove):
        _header_name(name, f"{at}.remove[{i}]")


def _check_fault(fault: Fault, at: str) -> None:
    if fault.delay is not None:
        seconds(fault.delay.duration, f"{at}.delay.duration")
        _within(fault.delay.percent, f"{at}.delay.percent", 0, 100)
    if fault.abort is not None:
        _within(fault.abort.status, f"{at}.abort.status", 200, 599)
        _within(fault.abort.percent, f"{at}.abort.percent", 0, 100)


def _check_limits(route: Route) -> None:
    if route.max_request_bytes is not None:
        _within(route.max_request_bytes, "$.max_request_bytes", 0, 1 << 40)
    if route.timeout is not None:
        seconds(route.timeout, "$.timeout", positive=True)
    if route.idle_timeout is not None:
        seconds(route.idle_timeout, "$.idle_timeout", positive=True)
    if route.hash_header is not None:
        _header_name(route.hash_header, "$.hash_header")


def _check_retries(retries: Retries, at: str) -> None:
    _within(retries.attempts, f"{at}.attempts", 1, 10)
    for i, status in enumerate(retries.statuses):
        _within(status, f"{at}.statuses[{i}]", 100, 599)
    if retries.per_try_timeout is not None:
        seconds(retries.per_try_timeout, f"{at}.per_try_timeout", positive=True)
    if retries.budget is not None:
        _within(retries.budget.percent, f"{at}.budget.percent", 0, 1000)
        _within(retries.budget.min_per_second, f"{at}.budget.min_per_second", 0, 1_000_000)
        _within(seconds(retries.budget.ttl, f"{at}.budget.ttl"), f"{at}.budget.ttl", 1, 60)


def _check_rate_limit(limit: RateLimit, at: str) -> None:
    try:
        rate = parse_rate(limit.rate)
    except ValueError as exc:
        raise _fail(f"{at}.rate", str(exc)) from None
    _within(rate, f"{at}.rate", 1e-6, 1_000_000)
    if limit.burst is not None:
        _within(limit.burst, f"{at}.burst", 1, 1_000_000)
    key = limit.key
    if key.startswith("header:"):
        _header_name(key.removeprefix("header:"), f"{at}.key")
    elif key not in ("client_ip", "route"):
        raise _fail(f"{at}.key", f'must be "client_ip", "route" or "header:NAME", got {key!r}')
    _within(limit.max_keys, f"{at}.max_keys", 1, 10_000_000)


# -- wire form ------------------------------------------------------------------------------

_decoder = msgspec.json.Decoder(Route)
_encoder = msgspec.json.Encoder()


def decode_route(raw: bytes | str) -> Route:
    """A route from JSON; InvalidArgument (field = JSON path) when it is not one."""
    return decode_document(_decoder, raw)


def route_from_object(obj: object) -> Route:
    """A route from already-parsed data (YAML); errors as `decode_route`."""
    return convert_document(obj, Route)


def encode_route(route: Route) -> bytes:
    """JSON with only the fields that differ from their defaults."""
    return _encoder.encode(route)
