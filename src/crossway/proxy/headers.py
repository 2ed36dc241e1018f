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
from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]

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


@dataclass(frozen=True, slots=True)
class ForwardingPolicy:
    """How forwarding headers are written; one per listener."""

    via: bytes = b"crossway"
    trust_incoming: bool = False
    forwarded: bool = True
    x_forwarded: bool = True


@dataclass(frozen=True, slots=True)
class Peer:
    """What the proxy knows about the client side of a request."""

    address: str
    scheme: bytes = b"http"
    host: bytes | None = None
    version: bytes = b"1.1"


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
    out = strip_hop_by_hop(headers, keep_upgrade=keep_upgrade)
    prior = _prior_forwarding(out) if policy.trust_incoming else {}
    out = [(n, v) for n, v in out if n not in _REWRITTEN]
    host = peer.host or b""
    if policy.x_forwarded:
        out.append((b"x-forwarded-for", _append(prior.get(b"x-forwarded-for"), peer.address)))
        out.append((b"x-forwarded-proto", prior.get(b"x-forwarded-proto", peer.scheme)))
        out.append((b"x-forwarded-host", prior.get(b"x-forwarded-host", host)))
    if policy.forwarded:
        element = _forwarded_element(peer)
        earlier = prior.get(b"forwarded")
        out.append((b"forwarded", earlier + b", " + element if earlier else element))
    out.append((b"via", _via(headers, peer.version, policy.via)))
    return out


def forward_response(headers: Headers, version: bytes, policy: ForwardingPolicy) -> Headers:
    """The headers to send the client for an upstream response (hop-by-hop out, Via in)."""
    out = [(n, v) for n, v in strip_hop_by_hop(headers) if n != b"via"]
    out.append((b"via", _via(headers, version, policy.via)))
    return out


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


def _via(headers: Headers, version: bytes, pseudonym: bytes) -> bytes:
    earlier = b", ".join(v for n, v in headers if n == b"via")
    entry = version + b" " + pseudonym
    return earlier + b", " + entry if earlier else entry
