from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crossway.proxy.headers import (
    HOP_BY_HOP,
    ForwardingPolicy,
    Headers,
    Peer,
    connection_tokens,
    forward_request,
    forward_response,
    strip_hop_by_hop,
)

PEER = Peer(address="10.0.0.7", scheme=b"https", host=b"shop.example:8443", version=b"1.1")


def names(headers: Headers) -> list[bytes]:
    return [n for n, _ in headers]


def value(headers: Headers, name: bytes) -> bytes:
    found = [v for n, v in headers if n == name]
    assert len(found) == 1, (name, headers)
    return found[0]


def test_hop_by_hop_and_connection_named_fields_are_removed() -> None:
    headers = [
        (b"host", b"a"),
        (b"connection", b"keep-alive, X-Secret, host"),
        (b"keep-alive", b"timeout=5"),
        (b"x-secret", b"s"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"upgrade", b"websocket"),
        (b"content-length", b"3"),
        (b"accept", b"*/*"),
    ]
    assert strip_hop_by_hop(headers) == [(b"host", b"a"), (b"accept", b"*/*")]
    kept = strip_hop_by_hop(headers, keep_upgrade=True)
    assert (b"upgrade", b"websocket") in kept


def test_connection_tokens_handle_lists_and_repeats() -> None:
    headers = [(b"connection", b" Close ,  X-A"), (b"connection", b"x-b,,")]
    assert connection_tokens(headers) == {b"close", b"x-a", b"x-b"}


def test_untrusted_forwarding_headers_are_replaced() -> None:
    incoming = [
        (b"host", b"shop.example:8443"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"forwarded", b"for=6.6.6.6"),
        (b"x-forwarded-proto", b"gopher"),
    ]
    out = forward_request(incoming, PEER, ForwardingPolicy())
    assert value(out, b"x-forwarded-for") == b"10.0.0.7"
    assert value(out, b"x-forwarded-proto") == b"https"
    assert value(out, b"x-forwarded-host") == b"shop.example:8443"
    assert value(out, b"forwarded") == b'for=10.0.0.7;proto=https;host="shop.example:8443"'
    assert value(out, b"via") == b"1.1 crossway"


def test_trusted_forwarding_headers_are_appended() -> None:
    incoming = [
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"forwarded", b"for=1.1.1.1"),
        (b"via", b"1.0 edge"),
    ]
    out = forward_request(incoming, PEER, ForwardingPolicy(trust_incoming=True))
    assert value(out, b"x-forwarded-for") == b"1.1.1.1, 2.2.2.2, 10.0.0.7"
    assert value(out, b"forwarded").startswith(b"for=1.1.1.1, for=10.0.0.7")
    assert value(out, b"via") == b"1.0 edge, 1.1 crossway"


def test_ipv6_client_is_bracketed_in_forwarded() -> None:
    out = forward_request([], Peer(address="::1"), ForwardingPolicy())
    assert value(out, b"forwarded") == b'for="[::1]";proto=http'


def test_policy_can_turn_headers_off() -> None:
    out = forward_request([], PEER, ForwardingPolicy(forwarded=False, x_forwarded=False))
    assert names(out) == [b"via"]


def test_response_loses_hop_by_hop_and_gains_via() -> None:
    out = forward_response(
        [(b"connection", b"close"), (b"content-type", b"text/plain")], b"1.1", ForwardingPolicy()
    )
    assert out == [(b"content-type", b"text/plain"), (b"via", b"1.1 crossway")]


# Fields a client cannot make the proxy drop, and those the proxy writes itself.
PROTECTED_OR_GENERATED = {
    b"host",
    b"authorization",
    b"cookie",
    b"via",
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
field_names = st.sampled_from(
    [*sorted(HOP_BY_HOP), b"host", b"accept", b"x-a", b"authorization", b"cookie", b"via"]
)


@given(st.lists(st.tuples(field_names, st.binary(max_size=10)), max_size=12), st.booleans())
def test_forwarded_request_never_carries_hop_by_hop(headers: Headers, trust: bool) -> None:
    named = connection_tokens(headers)
    out = forward_request(headers, PEER, ForwardingPolicy(trust_incoming=trust))
    for name in names(out):
        assert name not in HOP_BY_HOP
        assert name not in named or name in PROTECTED_OR_GENERATED
    for name, val in headers:
        if name in {b"host", b"authorization", b"cookie"}:
            assert (name, val) in out
