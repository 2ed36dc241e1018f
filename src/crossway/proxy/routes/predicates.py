"""Request predicates compiled once per configuration: header and query
conditions, host and path helpers shared by the route table and the actions.

Theory of operation
-------------------
Each condition of a route document becomes a small object with a `__call__`
that answers one request in a few attribute reads and at most one regex
search with a pattern compiled here, never on the request path. Requests
reach them in the shape the engine already has:

- headers: a mapping of lower-case names to values (repeated headers joined
  with ", " as RFC 9110 allows);
- query: the raw query string, parsed only when a route has a query
  condition (`QueryView` parses it at most once per request).

Invariants
----------
- Header names are compared lower-case; values exactly (case-sensitive).
- A missing header fails every condition except an inverted one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import parse_qsl

from crossway.proxy.routes.model import HeaderMatch, QueryMatch

Headers = Mapping[str, str]


class HeaderCheck:
    """One compiled `HeaderMatch`."""

    __slots__ = ("exact", "invert", "name", "prefix", "regex")

    def __init__(self, spec: HeaderMatch) -> None:
        self.name = spec.name.lower()
        self.exact = spec.exact
        self.prefix = spec.prefix
        self.regex = re.compile(spec.regex) if spec.regex is not None else None
        self.invert = spec.invert

    def __call__(self, headers: Headers) -> bool:
        value = headers.get(self.name)
        return self._holds(value) != self.invert

    def _holds(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.exact is not None:
            return value == self.exact
        if self.prefix is not None:
            return value.startswith(self.prefix)
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        return True


def header_checks(specs: tuple[HeaderMatch, ...]) -> tuple[HeaderCheck, ...]:
    return tuple(HeaderCheck(spec) for spec in specs)


def all_hold(checks: tuple[HeaderCheck, ...], headers: Headers) -> bool:
    # a plain loop rather than all(...): no generator object per request
    for check in checks:  # noqa: SIM110
        if not check(headers):
            return False
    return True


class QueryView:
    """The query string of one request, parsed on first use (first value of
    each name wins, as most frameworks do)."""

    __slots__ = ("_parsed", "raw")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self._parsed: dict[str, str] | None = None

    def get(self, name: str) -> str | None:
        if self._parsed is None:
            self._parsed = {}
            for key, value in parse_qsl(self.raw, keep_blank_values=True):
                self._parsed.setdefault(key, value)
        return self._parsed.get(name)


class QueryCheck:
    """One compiled `QueryMatch`."""

    __slots__ = ("exact", "name", "regex")

    def __init__(self, spec: QueryMatch) -> None:
        self.name = spec.name
        self.exact = spec.exact
        self.regex = re.compile(spec.regex) if spec.regex is not None else None

    def __call__(self, query: QueryView) -> bool:
        value = query.get(self.name)
        if value is None:
            return False
        if self.exact is not None:
            return value == self.exact
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        return True


def bare_host(host: str) -> str:
    """`host` lower-case without its port ("[::1]:80" -> "[::1]")."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    colon = host.rfind(":")
    return (host[:colon] if colon >= 0 else host).lower()


def host_matches(pattern: str, host: str) -> bool:
    """Whether a route's `host` (exact or "*.domain") takes bare `host`."""
    pattern = pattern.lower()
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern


def prefix_matches(prefix: str, path: str) -> bool:
    """Segment-aware prefix: "/a" takes "/a" and "/a/b", not "/ab"; a prefix
    ending in "/" takes whatever starts with it."""
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix.endswith("/") or path[len(prefix)] == "/"
