"""The compiled route table: from a request to the one route that takes it.

Precedence — when several routes take a request, the most specific wins,
compared in this order (the first difference decides):

    1. host:   an exact host, then "*.domain" wildcards by longest domain,
               then routes without a host
    2. path:   exact `path`, then `path_regex` routes, then `path_prefix`
               by longest prefix, then routes without a path condition
    3. method: routes that list methods before those that do not
    4. the number of header conditions, most first
    5. the number of query conditions, most first
    6. the route name, alphabetically (so the choice is deterministic)

This is the order of the Kubernetes Gateway API (host, then exact, then
longest prefix, method, headers, query), with regexes placed after exact
paths: an operator who writes a regex means something specific.

Theory of operation
-------------------
`RouteTable(routes)` compiles once per configuration: every regex, header
and query condition and every action is built here (`CompiledRoute`), and
routes are filed in hash maps — by exact host, by wildcard domain, and
within each host group by exact path and in a trie of path segments
(`trie.PrefixTrie`) — each bucket sorted by the rest of the precedence key.
`match` then costs a few dict lookups: the host's groups in precedence
order; in each, the exact path, the regexes, then the prefixes that take
the path, longest first (one walk down the trie), then the pathless
routes. The first candidate whose method, header and query conditions hold
is the answer. No regex is compiled and nothing is sorted
per request; a match without regex captures returns a `Match` built at
compile time, so the common case allocates little beyond the path's split.

Invariants
----------
- `RouteTable.match` returns the same route as `reference_match` (the
  definition above, applied naively to every route) for every request.
- A table is immutable; a new configuration builds a new table, swapped in
  whole by the engine.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from crossway.proxy.routes.actions import RouteActions, compile_actions
from crossway.proxy.routes.model import Route
from crossway.proxy.routes.predicates import (
    HeaderCheck,
    Headers,
    QueryCheck,
    QueryView,
    all_hold,
    bare_host,
    header_checks,
    host_matches,
    prefix_matches,
)
from crossway.proxy.routes.trie import PrefixTrie

NO_CAPTURES: Mapping[str, str] = MappingProxyType({})
_EXACT, _REGEX, _PREFIX, _ANY = range(4)
_NO_QUERY = QueryView("")


class Match:
    """The route that takes a request and the regex's named captures."""

    __slots__ = ("captures", "route")

    def __init__(self, route: CompiledRoute, captures: Mapping[str, str] = NO_CAPTURES) -> None:
        self.route = route
        self.captures = captures

    def __repr__(self) -> str:
        return f"Match({self.route.name!r}, {dict(self.captures)!r})"

    @property
    def name(self) -> str:
        return self.route.name


class CompiledRoute:
    """One route with its conditions and actions built (see the module header)."""

    __slots__ = (
        "actions",
        "headers",
        "match",
        "methods",
        "name",
        "query",
        "regex",
        "route",
        "rule_key",
    )

    def __init__(self, name: str, route: Route) -> None:
        spec = route.match
        self.name = name
        self.route = route
        self.methods = _methods(route)
        self.headers: tuple[HeaderCheck, ...] = header_checks(spec.headers)
        self.query = tuple(QueryCheck(q) for q in spec.query)
        self.regex = re.compile(spec.path_regex) if spec.path_regex is not None else None
        self.actions: RouteActions = compile_actions(route)
        self.match = Match(self)
        # precedence after host and path (module header, items 3-6)
        self.rule_key = (self.methods is None, -len(self.headers), -len(self.query), name)

    def path_key(self) -> tuple[int, int]:
        spec = self.route.match
        if spec.path is not None:
            return (_EXACT, 0)
        if self.regex is not None:
            return (_REGEX, 0)
        if spec.path_prefix is not None:
            return (_PREFIX, -len(spec.path_prefix))
        return (_ANY, 0)

    def takes(self, method: str, headers: Headers, query: QueryView) -> bool:
        """The conditions besides host and path."""
        if self.methods is not None and method not in self.methods:
            return False
        if self.headers and not all_hold(self.headers, headers):
            return False
        for check in self.query:  # noqa: SIM110 (no generator per request)
            if not check(query):
                return False
        return True


@dataclass(slots=True)
class _PathIndex:
    """The routes of one host group, filed by path condition."""

    exact: dict[str, list[CompiledRoute]] = field(default_factory=dict)
    regex: list[CompiledRoute] = field(default_factory=list)
    prefix: PrefixTrie[CompiledRoute] = field(default_factory=PrefixTrie)
    any: list[CompiledRoute] = field(default_factory=list)

    def add(self, route: CompiledRoute) -> None:
        spec = route.route.match
        if spec.path is not None:
            self.exact.setdefault(spec.path, []).append(route)
        elif route.regex is not None:
            self.regex.append(route)
        elif spec.path_prefix is not None:
            self.prefix.add(spec.path_prefix, route)
        else:
            self.any.append(route)

    def seal(self) -> None:
        for bucket in (*self.exact.values(), self.regex, *self.prefix.buckets(), self.any):
            bucket.sort(key=lambda r: r.rule_key)

    def find(self, method: str, path: str, headers: Headers, query: QueryView) -> Match | None:
        bucket = self.exact.get(path)
        if bucket is not None:
            found = _first(bucket, method, headers, query)
            if found is not None:
                return found.match
        for route in self.regex:
            assert route.regex is not None
            hit = route.regex.fullmatch(path)
            if hit is not None and route.takes(method, headers, query):
                return Match(route, hit.groupdict("")) if route.regex.groupindex else route.match
        return self._find_prefix(method, path, headers, query)

    def _find_prefix(
        self, method: str, path: str, headers: Headers, query: QueryView
    ) -> Match | None:
        if self.prefix.size:
            for bucket in self.prefix.candidates(path):
                found = _first(bucket, method, headers, query)
                if found is not None:
                    return found.match
        found = _first(self.any, method, headers, query)
        return found.match if found is not None else None


def _methods(route: Route) -> frozenset[str] | None:
    methods = route.match.methods
    if not methods:
        return None
    # a CORS preflight is an OPTIONS request: a route with CORS must take it
    # to answer it, whatever methods it lists for the real requests
    return frozenset(methods) | {"OPTIONS"} if route.cors is not None else frozenset(methods)


def _first(
    bucket: list[CompiledRoute], method: str, headers: Headers, query: QueryView
) -> CompiledRoute | None:
    for route in bucket:
        if route.takes(method, headers, query):
            return route
    return None


class RouteTable:
    """All routes of one configuration, compiled (see the module header)."""

    __slots__ = ("_any_host", "_exact_hosts", "_queries", "_wildcards", "routes")

    def __init__(
        self,
        routes: Mapping[str, Route] | Iterable[tuple[str, Route]],
        *,
        reuse: RouteTable | None = None,
    ) -> None:
        """Compile `routes`; a route equal to one of `reuse` (the table this
        one replaces) keeps its compiled form, so a change of one route among
        thousands compiles one."""
        items = routes.items() if isinstance(routes, Mapping) else routes
        known = reuse.routes if reuse is not None else {}
        self.routes: dict[str, CompiledRoute] = {n: _compiled(n, r, known) for n, r in items}
        self._exact_hosts: dict[str, _PathIndex] = {}
        self._wildcards: dict[str, _PathIndex] = {}
        self._any_host = _PathIndex()
        self._queries = any(r.query for r in self.routes.values())
        for compiled in self.routes.values():
            self._group_of(compiled.route.match.host).add(compiled)
        for index in (*self._exact_hosts.values(), *self._wildcards.values(), self._any_host):
            index.seal()

    def _group_of(self, host: str | None) -> _PathIndex:
        if host is None:
            return self._any_host
        host = host.lower()
        if host.startswith("*."):
            return self._wildcards.setdefault(host[1:], _PathIndex())
        return self._exact_hosts.setdefault(host, _PathIndex())

    def match(
        self,
        method: str,
        path: str,
        host: str | None = None,
        headers: Headers = MappingProxyType({}),
        query: str = "",
    ) -> Match | None:
        """The route that takes this request, or None (the engine's 404).

        `path` is the request target's path as received (no query string, not
        percent-decoded), `host` the Host header (port and case ignored),
        `headers` lower-case names to values, `query` the raw query string."""
        # without query conditions in the table, no request needs its own view
        view = QueryView(query) if self._queries else _NO_QUERY
        if host is not None and (self._exact_hosts or self._wildcards):
            for index in self._host_groups(bare_host(host)):
                found = index.find(method, path, headers, view)
                if found is not None:
                    return found
        return self._any_host.find(method, path, headers, view)

    def _host_groups(self, host: str) -> list[_PathIndex]:
        # a list, not a generator: closing a suspended generator at the first
        # hit would cost more than the lookups
        groups = []
        exact = self._exact_hosts.get(host)
        if exact is not None:
            groups.append(exact)
        if self._wildcards:
            dot = host.find(".")
            while dot > 0:
                group = self._wildcards.get(host[dot:])
                if group is not None:
                    groups.append(group)
                dot = host.find(".", dot + 1)
        return groups


def _compiled(name: str, route: Route, known: Mapping[str, CompiledRoute]) -> CompiledRoute:
    old = known.get(name)
    if old is not None and (old.route is route or old.route == route):
        return old
    return CompiledRoute(name, route)


def precedence_key(
    route: CompiledRoute, host: str | None
) -> tuple[tuple[int, int], tuple[int, int], tuple[bool, int, int, str]]:
    """The full precedence key of `route` for a request to `host` (smaller wins)."""
    pattern = route.route.match.host
    if pattern is None:
        host_key = (2, 0)
    elif pattern.startswith("*."):
        host_key = (1, -len(pattern))
    else:
        host_key = (0, 0)
    return (host_key, route.path_key(), route.rule_key)


def reference_match(
    table: RouteTable,
    method: str,
    path: str,
    host: str | None = None,
    headers: Headers = MappingProxyType({}),
    query: str = "",
) -> CompiledRoute | None:
    """The precedence of the module header applied naively to every route:
    slow, obviously right, the oracle the tests hold `RouteTable.match` to."""
    bare = bare_host(host) if host is not None else None
    view = QueryView(query)
    taking = [r for r in table.routes.values() if _takes(r, method, path, bare, headers, view)]
    return min(taking, key=lambda r: precedence_key(r, bare), default=None)


def _takes(
    route: CompiledRoute,
    method: str,
    path: str,
    host: str | None,
    headers: Headers,
    query: QueryView,
) -> bool:
    spec = route.route.match
    if spec.host is not None and (host is None or not host_matches(spec.host, host)):
        return False
    if spec.path is not None and path != spec.path:
        return False
    if route.regex is not None and route.regex.fullmatch(path) is None:
        return False
    if spec.path_prefix is not None and not prefix_matches(spec.path_prefix, path):
        return False
    return route.takes(method, headers, query)
