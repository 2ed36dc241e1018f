"""What a matched route does with a request, as pure decisions.

Theory of operation
-------------------
`compile_actions(route)` folds a route document once per configuration into
a `RouteActions`: cumulative weights for the splits, compiled header
conditions, the rewrite template cut into literal and capture parts, the
header edits and the local answers (direct response, CORS headers) encoded
ahead of time, the timeouts in seconds and the retry rule (retry.py).
Per request, `decide(...)` answers with a `Decision` — answer locally, or
forward to this backend with this path, after this delay, with a copy to
that mirror — and the engine carries it out; `response_headers(...)` does
the same for the answer that comes back (header edits, CORS). Nothing here does
I/O, sleeps or reads a clock; randomness comes in as `rng` (a callable
returning a float in [0, 1), e.g. `random.random`), so tests replay any
sequence of draws.

The order of the steps, as in Envoy's filter chain: a CORS preflight is
answered first (it must not be delayed, aborted or forwarded), then fault
injection (delay, then abort), then the route's answer: redirect, direct
response, or forwarding (header-based routing, weighted split, path
rewrite, mirroring).

Invariants
----------
- `WeightedSplit.pick(u)` picks backend i for exactly weight_i/total of
  [0, 1): over the grid u = (k + 0.5)/total each backend is picked exactly
  `weight` times; a backend of weight 0 is never picked.
- Every function is deterministic in its arguments and the rng draws.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate

from crossway.proxy.routes.model import (
    Backend,
    Cors,
    DirectResponse,
    Duration,
    Fault,
    HeaderEdits,
    Mirror,
    Redirect,
    Route,
    seconds,
)
from crossway.proxy.routes.predicates import HeaderCheck, Headers, all_hold, header_checks
from crossway.proxy.routes.retry import RetryRule

Rng = Callable[[], float]
HeaderList = list[tuple[str, str]]
_CAPTURE = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class LocalResponse:
    """An answer the gateway gives itself (headers lower-case)."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


class WeightedSplit:
    """Backends and their cumulative weights (see the invariants)."""

    __slots__ = ("backends", "cumulative", "total")

    def __init__(self, backends: Iterable[Backend]) -> None:
        self.backends = tuple(b for b in backends if b.weight > 0)
        self.cumulative = list(accumulate(b.weight for b in self.backends))
        self.total = self.cumulative[-1] if self.cumulative else 0

    def pick(self, u: float) -> Backend:
        """The backend for a uniform draw `u` in [0, 1)."""
        if len(self.backends) == 1:
            return self.backends[0]
        i = bisect.bisect_right(self.cumulative, u * self.total)
        return self.backends[min(i, len(self.backends) - 1)]


class HeaderEditor:
    """A compiled `HeaderEdits`: remove, then set (replace), then add."""

    __slots__ = ("add", "drop", "set")

    def __init__(self, edits: HeaderEdits) -> None:
        self.set = tuple((k.lower(), v) for k, v in edits.set.items())
        self.add = tuple((k.lower(), v) for k, v in edits.add.items())
        self.drop = frozenset(n.lower() for n in edits.remove) | {k for k, _ in self.set}

    def apply(self, headers: HeaderList) -> HeaderList:
        """A new list: `headers` (any case) edited; the input is not changed."""
        drop = self.drop
        kept = [(k, v) for k, v in headers if k.lower() not in drop]
        kept.extend(self.set)
        kept.extend(self.add)
        return kept


class CorsPolicy:
    """A compiled `Cors`: which origins, and the headers answered to them."""

    __slots__ = ("any_origin", "credentials", "expose", "origins", "preflight_headers")

    def __init__(self, spec: Cors) -> None:
        self.any_origin = "*" in spec.allow_origins
        self.origins = frozenset(spec.allow_origins)
        self.credentials = spec.allow_credentials
        self.expose = ", ".join(spec.expose_headers)
        fixed = [
            ("access-control-allow-methods", ", ".join(spec.allow_methods)),
            ("access-control-max-age", str(int(seconds(spec.max_age, "$.cors.max_age")))),
        ]
        if spec.allow_headers:
            fixed.append(("access-control-allow-headers", ", ".join(spec.allow_headers)))
        self.preflight_headers = tuple(fixed)

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def origin_headers(self, origin: str) -> list[tuple[str, str]]:
        # "*" cannot carry credentials (Fetch standard): echo the origin then
        wildcard = self.any_origin and not self.credentials
        headers = [("access-control-allow-origin", "*" if wildcard else origin)]
        if not wildcard:
            headers.append(("vary", "Origin"))
        if self.credentials:
            headers.append(("access-control-allow-credentials", "true"))
        return headers

    def preflight(self, method: str, headers: Headers) -> LocalResponse | None:
        """The answer to a CORS preflight, or None when this is not one. A
        preflight from an origin not allowed gets 403 and no CORS headers."""
        origin = headers.get("origin")
        if method != "OPTIONS" or origin is None:
            return None
        if "access-control-request-method" not in headers:
            return None
        if not self.allows(origin):
            return LocalResponse(403)
        answer = self.origin_headers(origin) + list(self.preflight_headers)
        return LocalResponse(204, tuple(answer))

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """Headers to add to a forwarded answer for `origin` (none when the
        request had no Origin or it is not allowed)."""
        if origin is None or not self.allows(origin):
            return []
        headers = self.origin_headers(origin)
        if self.expose:
            headers.append(("access-control-expose-headers", self.expose))
        return headers


@dataclass(frozen=True, slots=True)
class RouteActions:
    """A route folded once per configuration (see `compile_actions`)."""

    split: WeightedSplit
    header_routes: tuple[tuple[tuple[HeaderCheck, ...], WeightedSplit], ...]
    prefix: str | None
    rewrite_prefix: str | None
    rewrite_parts: tuple[tuple[bool, str], ...] | None
    request_headers: HeaderEditor | None
    response_headers: HeaderEditor | None
    redirect: Redirect | None
    direct: LocalResponse | None
    cors: CorsPolicy | None
    fault: Fault | None
    mirror: Mirror | None
    retry: RetryRule
    timeout: float | None
    idle_timeout: float | None


def compile_actions(route: Route) -> RouteActions:
    """Fold a (valid) route; cannot fail for a `Route` that exists."""
    rewrite = route.rewrite
    return RouteActions(
        split=WeightedSplit(route.backends),
        header_routes=tuple(
            (header_checks(r.headers), WeightedSplit(r.backends)) for r in route.header_routes
        ),
        prefix=route.match.path_prefix,
        rewrite_prefix=rewrite.prefix if rewrite else None,
        rewrite_parts=_template(rewrite.path) if rewrite and rewrite.path else None,
        request_headers=_editor(route.request_headers),
        response_headers=_editor(route.response_headers),
        redirect=route.redirect,
        direct=_direct(route.direct_response),
        cors=CorsPolicy(route.cors) if route.cors else None,
        fault=route.fault,
        mirror=route.mirror,
        retry=RetryRule(route.retries),
        timeout=_seconds_or_none(route.timeout, "$.timeout"),
        idle_timeout=_seconds_or_none(route.idle_timeout, "$.idle_timeout"),
    )


def _seconds_or_none(value: Duration | None, field: str) -> float | None:
    return seconds(value, field) if value is not None else None


def _editor(edits: HeaderEdits | None) -> HeaderEditor | None:
    return HeaderEditor(edits) if edits is not None else None


def _direct(spec: DirectResponse | None) -> LocalResponse | None:
    if spec is None:
        return None
    headers = (("content-type", spec.content_type),) if spec.body else ()
    return LocalResponse(spec.status, headers, spec.body.encode())


def _template(path: str) -> tuple[tuple[bool, str], ...]:
    """ "/v2/{id}/x" -> ((False, "/v2/"), (True, "id"), (False, "/x"))."""
    parts: list[tuple[bool, str]] = []
    at = 0
    for found in _CAPTURE.finditer(path):
        parts.append((False, path[at : found.start()]))
        parts.append((True, found.group(1)))
        at = found.end()
    parts.append((False, path[at:]))
    return tuple(p for p in parts if p[0] or p[1])


# -- per-request decisions --------------------------------------------------------------


def choose_split(actions: RouteActions, headers: Headers) -> WeightedSplit:
    """The first header route whose conditions all hold, else the route's own split."""
    for checks, split in actions.header_routes:
        if all_hold(checks, headers):
            return split
    return actions.split


def rewrite_path(actions: RouteActions, path: str, captures: Mapping[str, str]) -> str:
    """The upstream path: `path` with the matched prefix replaced, or the
    template filled with the regex captures, or `path` unchanged."""
    parts = actions.rewrite_parts
    if parts is not None:
        return "".join(captures.get(text, "") if is_name else text for is_name, text in parts)
    if actions.rewrite_prefix is not None and actions.prefix is not None:
        rest = path[len(actions.prefix) :]
        if actions.rewrite_prefix.endswith("/") and rest.startswith("/"):
            rest = rest[1:]
        joined = actions.rewrite_prefix + rest
        return joined if joined.startswith("/") else "/" + joined
    return path


def redirect_location(redirect: Redirect, *, scheme: str, host: str, path: str, query: str) -> str:
    """The Location of a redirect: each part the redirect leaves out is the
    request's, except that a new host or a new scheme drops the request's
    port (it belonged to the old one) unless `port` is given."""
    target_host = redirect.host or host
    new_scheme = redirect.scheme is not None and redirect.scheme != scheme
    if redirect.port is not None:
        target_host = f"{_without_port(target_host)}:{redirect.port}"
    elif new_scheme:
        target_host = _without_port(target_host)
    location = f"{redirect.scheme or scheme}://{target_host}{redirect.path or path}"
    if query and not redirect.strip_query:
        location += "?" + query
    return location


def _without_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class FaultDecision:
    delay: float = 0.0
    abort: int | None = None


NO_FAULT = FaultDecision()


def fault_decision(fault: Fault | None, rng: Rng) -> FaultDecision:
    """Whether to delay (seconds) and/or abort (status) this request: each
    with its own draw against its percent."""
    if fault is None:
        return NO_FAULT
    delay = 0.0
    if fault.delay is not None and rng() * 100.0 < fault.delay.percent:
        delay = seconds(fault.delay.duration, "$.fault.delay.duration")
    abort = None
    if fault.abort is not None and rng() * 100.0 < fault.abort.percent:
        abort = fault.abort.status
    return FaultDecision(delay, abort) if delay or abort is not None else NO_FAULT


def should_mirror(mirror: Mirror | None, rng: Rng) -> bool:
    """Whether this request is copied to the mirror (`percent` of them)."""
    return mirror is not None and rng() * 100.0 < mirror.percent


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request. With `local` set, wait `delay` seconds
    then send it; otherwise wait `delay`, forward to `backend` with `path`,
    and (when `mirror` is set) send a copy to that service, ignoring its answer."""

    local: LocalResponse | None
    delay: float = 0.0
    backend: Backend | None = None
    path: str = ""
    mirror: str | None = None


def decide(
    actions: RouteActions,
    captures: Mapping[str, str],
    *,
    method: str,
    scheme: str,
    host: str,
    path: str,
    query: str,
    headers: Headers,
    rng: Rng,
) -> Decision:
    """The decision for one matched request (see the module header for the
    order of the steps). Pure: no I/O, randomness only from `rng`."""
    if actions.cors is not None:
        preflight = actions.cors.preflight(method, headers)
        if preflight is not None:
            return Decision(preflight)
    fault = fault_decision(actions.fault, rng)
    if fault.abort is not None:
        return Decision(_with_cors(actions, LocalResponse(fault.abort), headers), fault.delay)
    if actions.redirect is not None:
        location = redirect_location(
            actions.redirect, scheme=scheme, host=host, path=path, query=query
        )
        answer = LocalResponse(actions.redirect.status, (("location", location),))
        return Decision(_with_cors(actions, answer, headers), fault.delay)
    if actions.direct is not None:
        return Decision(_with_cors(actions, actions.direct, headers), fault.delay)
    backend = choose_split(actions, headers).pick(rng())
    mirror = actions.mirror
    copy_to = mirror.service if mirror is not None and should_mirror(mirror, rng) else None
    upstream_path = rewrite_path(actions, path, captures)
    return Decision(None, fault.delay, backend, upstream_path, copy_to)


def _with_cors(actions: RouteActions, answer: LocalResponse, headers: Headers) -> LocalResponse:
    # a browser hides an answer without CORS headers from the page, whatever it says
    if actions.cors is None:
        return answer
    extra = actions.cors.response_headers(headers.get("origin"))
    if not extra:
        return answer
    return LocalResponse(answer.status, answer.headers + tuple(extra), answer.body)


def response_headers(actions: RouteActions, headers: HeaderList, origin: str | None) -> HeaderList:
    """The headers of a forwarded answer as the client gets them: the route's
    `response_headers` edits, then the CORS headers for the request's
    `origin` (the Origin header, None without one). Returns `headers` itself
    when the route changes nothing."""
    editor = actions.response_headers
    cors = actions.cors.response_headers(origin) if actions.cors is not None else []
    if editor is None and not cors:
        return headers
    edited = editor.apply(headers) if editor is not None else list(headers)
    if cors:
        names = {name for name, _ in cors}
        edited = [(k, v) for k, v in edited if k.lower() not in names] + cors
    return edited
