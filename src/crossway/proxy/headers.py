# Header rewriting at the proxy boundary: hop-by-hop removal and the
# forwarding headers (X-Forwarded-For/-Proto/-Host, Forwarded, Via).
#
# Theory of operation
# -------------------
# A proxy is two HTTP connections glued together. Fields that describe one
# connection (hop-by-hop: Connection, Keep-Alive, Transfer-Encoding, TE,
# Trailer, Upgrade, Proxy-Connection, and every field the Connection header
# names) must not leak to the other; the engine re-frames bodies itself, so
# Content-Length is dropped here too and written again by the encoder.
#
# Forwarding headers tell the upstream who the client was. Whether the
# client's own X-Forwarded-* / Forwarded values are believed is a deployment
# decision (`trust_incoming`): an edge gateway replaces them (a client could
# forge any address), a gateway behind a trusted load balancer appends to them.
#
# Invariants
# ----------
# - The output never contains a hop-by-hop field, Content-Length, or (unless
#   `keep_upgrade`) Upgrade; fields a client lists in Connection are removed
#   except the few whose removal would change the request's meaning
#   (`_PROTECTED`), so a client cannot make the proxy drop Host or credentials.
# - Header names are lowercase on input and output (http1.py lowercases).
# - One pass over the input; no regular expressions.
# - The common case — no hop-by-hop or forwarding field in the request — is a
#   list copy plus the forwarding fields, built once per (peer, policy).
from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar, overload

Headers = list[tuple[bytes, bytes]]
_T = TypeVar("_T")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",  # framing is re-derived by the encoder
    }
)
_FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)
_REWRITTEN = _FORWARDING | {b"via"}
_PROTECTED = frozenset({b"host", b"authorization", b"cookie"})
_SPECIAL = HOP_BY_HOP | _REWRITTEN
# In a response, a field named like a plain Connection token ("close") is
# dropped when Connection names it: such a response takes the general path.
_FIELD_NAMED = frozenset({b"via", b"close"})
_SPECIAL_RESPONSE = HOP_BY_HOP | _FIELD_NAMED
# Connection tokens that name no other field: no extra field to drop.
_PLAIN_CONNECTION = frozenset({b"close", b"keep-alive"})


@dataclass(frozen=True, slots=True, eq=False)
class ForwardingPolicy:
    """How forwarding headers are written; one per listener (compared and
    hashed by identity, as `Peer`: part of a cache key per request)."""

    via: bytes = b"crossway"
    trust_incoming: bool = False
    forwarded: bool = True
    x_forwarded: bool = True


@dataclass(frozen=True, slots=True, eq=False)
class Peer:
    """What the proxy knows about the client side of a request (compared and
    hashed by identity: one per connection and host, a cache key per request)."""

    address: str
    scheme: bytes = b"http"
    host: bytes | None = None
    version: bytes = b"1.1"


class HeaderView(Mapping[str, str]):
    """Request headers as lower-case str names to values, decoded only when
    looked up (repeated fields joined with ", " as RFC 9110 allows).

    Route predicates read a header or two of most requests, and many
    requests none; decoding every field into a dict per request cost more
    than the rest of the routing.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: Headers) -> None:
        self._raw = raw

    def _value(self, name: str) -> bytes | None:
        key = name.encode("latin-1")
        found: bytes | None = None
        for field_name, value in self._raw:
            if field_name == key:
                found = value if found is None else found + b", " + value
        return found

    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, default: str, /) -> str: ...
    @overload
    def get(self, key: str, default: _T, /) -> str | _T: ...

    def get(self, key: str, default: object = None, /) -> object:
        value = self._value(key)
        return default if value is None else value.decode("latin-1")

    def __getitem__(self, key: str) -> str:
        value = self._value(key)
        if value is None:
            raise KeyError(key)
        return value.decode("latin-1")

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._value(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(n.decode("latin-1") for n, _ in self._raw))

    def __len__(self) -> int:
        return len({n for n, _ in self._raw})


def connection_tokens(headers: Headers) -> set[bytes]:
    """The lowercase tokens of every Connection header."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def strip_hop_by_hop(headers: Headers, *, keep_upgrade: bool = False) -> Headers:
    """Headers without hop-by-hop fields; `keep_upgrade` keeps Upgrade for tunnels."""
    named = connection_tokens(headers) - _PROTECTED
    out: Headers = []
    for name, value in headers:
        dropped = name in HOP_BY_HOP or name in named
        if dropped and not (keep_upgrade and name == b"upgrade"):
            continue
        out.append((name, value))
    return out


def forward_request(
    headers: Headers, peer: Peer, policy: ForwardingPolicy, *, keep_upgrade: bool = False
) -> Headers:
    """The headers to send upstream for a client request.

    Drops hop-by-hop fields, then writes X-Forwarded-For/-Proto/-Host,
    Forwarded and Via per `policy`. Pure; never fails.
    """
    for name, _ in headers:
        if name in _SPECIAL:
            break
    else:
        out = headers.copy()
        out.extend(_fresh_forwarding(peer, policy))
        return out
    out = strip_hop_by_hop(headers, keep_upgrade=keep_upgrade)
    prior = _prior_forwarding(out) if policy.trust_incoming else {}
    out = [(n, v) for n, v in out if n not in _REWRITTEN]
    host = peer.host or b""
    if policy.x_forwarded:
        out.append((b"x-forwarded-for", _append(prior.get(b"x-forwarded-for"), peer.address)))
        out.append((b"x-forwarded-proto", prior.get(b"x-forwarded-proto", peer.scheme)))
        forwarded_host = prior.get(b"x-forwarded-host", host)
        if forwarded_host:  # an HTTP/1.0 client may name no host at all
            out.append((b"x-forwarded-host", forwarded_host))
    if policy.forwarded:
        element = _forwarded_element(peer)
        earlier = prior.get(b"forwarded")
        out.append((b"forwarded", earlier + b", " + element if earlier else element))
    out.append((b"via", _via(headers, peer.version, policy.via)))
    return out


def forward_response(headers: Headers, version: bytes, policy: ForwardingPolicy) -> Headers:
    """The headers to send the client for an upstream response (hop-by-hop out, Via in)."""
    # One pass for what upstreams usually send (Content-Length, Connection:
    # keep-alive, no Via); anything else takes the general path.
    out: Headers = []
    for name, value in headers:
        if name not in _SPECIAL_RESPONSE:
            out.append((name, value))
        elif name in _FIELD_NAMED or (
            name == b"connection" and value.strip().lower() not in _PLAIN_CONNECTION
        ):
            break
    else:
        out.append((b"via", _via_entry(version, policy.via)))
        return out
    out = [(n, v) for n, v in strip_hop_by_hop(headers) if n != b"via"]
    out.append((b"via", _via(headers, version, policy.via)))
    return out


@functools.lru_cache(maxsize=1024)
def _fresh_forwarding(peer: Peer, policy: ForwardingPolicy) -> tuple[tuple[bytes, bytes], ...]:
    """The forwarding fields for a request that carried none."""
    out: Headers = []
    host = peer.host or b""
    if policy.x_forwarded:
        out.append((b"x-forwarded-for", peer.address.encode()))
        out.append((b"x-forwarded-proto", peer.scheme))
        if host:
            out.append((b"x-forwarded-host", host))
    if policy.forwarded:
        out.append((b"forwarded", _forwarded_element(peer)))
    out.append((b"via", _via_entry(peer.version, policy.via)))
    return tuple(out)


def _prior_forwarding(headers: Headers) -> dict[bytes, bytes]:
    # Repeated fields are one comma-separated list (RFC 9110 5.3).
    prior: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in _FORWARDING:
            prior[name] = prior[name] + b", " + value if name in prior else value
    return prior


def _append(chain: bytes | None, address: str) -> bytes:
    return chain + b", " + address.encode() if chain else address.encode()


def _forwarded_element(peer: Peer) -> bytes:
    # RFC 7239: IPv6 addresses are bracketed and quoted; host is quoted
    # because it may contain a port's colon.
    address = peer.address
    node = f'"[{address}]"' if ":" in address else address
    element = b"for=" + node.encode() + b";proto=" + peer.scheme
    if peer.host:
        element += b';host="' + peer.host.replace(b'"', b"") + b'"'
    return element


@functools.lru_cache(maxsize=64)
def _via_entry(version: bytes, pseudonym: bytes) -> bytes:
    return version + b" " + pseudonym


def _via(headers: Headers, version: bytes, pseudonym: bytes) -> bytes:
    earlier = b", ".join(v for n, v in headers if n == b"via")
    entry = _via_entry(version, pseudonym)
    return earlier + b", " + entry if earlier else entry
