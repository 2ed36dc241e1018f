from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.proxy.http1 import (
    Body,
    EndOfRequest,
    Event,
    Limits,
    Rejected,
    RequestReceived,
    ServerConnection,
    State,
    Upgraded,
)


def conn(**limits: int | float | None) -> ServerConnection:
    return ServerConnection(clock=VirtualClock(), limits=Limits(**limits))  # type: ignore[arg-type]


def feed(data: bytes, *, step: int | None = None, **limits: int | float | None) -> list[Event]:
    c = conn(**limits)
    if step is None:
        return c.receive(data)
    events: list[Event] = []
    for i in range(0, len(data), step):
        events += c.receive(data[i : i + step])
    return events


def rejected(events: list[Event]) -> Rejected:
    last = events[-1]
    assert isinstance(last, Rejected), events
    return last


def body_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Body))


GET = b"GET /a?b=1 HTTP/1.1\r\nHost: example\r\nX-A: 1\r\n\r\n"


def test_simple_get_gives_head_and_end() -> None:
    events = feed(GET)
    assert len(events) == 2
    head = events[0]
    assert isinstance(head, RequestReceived)
    assert head.head.method == b"GET"
    assert head.head.target == b"/a?b=1"
    assert head.head.headers == [(b"host", b"example"), (b"x-a", b"1")]
    assert head.head.keep_alive
    assert not head.head.has_body
    assert isinstance(events[1], EndOfRequest)


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_content_length_body_in_any_split(step: int) -> None:
    req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
    events = feed(req, step=step)
    assert body_of(events) == b"hello world"
    assert isinstance(events[-1], EndOfRequest)


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_chunked_body_is_decoded_and_trailers_dropped(step: int) -> None:
    req = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    events = feed(req, step=step)
    head = events[0]
    assert isinstance(head, RequestReceived)
    assert head.head.chunked
    assert head.head.content_length is None
    assert (b"x-trailer", b"t") not in head.head.headers
    assert body_of(events) == b"hello world"
    assert isinstance(events[-1], EndOfRequest)


def test_pipelined_requests_come_out_in_order() -> None:
    events = feed(GET + b"GET /second HTTP/1.1\r\nHost: b\r\n\r\n")
    heads = [e.head for e in events if isinstance(e, RequestReceived)]
    assert [h.target for h in heads] == [b"/a?b=1", b"/second"]
    assert [h.host for h in heads] == [b"example", b"b"]


def test_nothing_after_a_closing_request_is_parsed() -> None:
    c = conn()
    smuggled = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    events = c.receive(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" + smuggled)
    assert [type(e) for e in events] == [RequestReceived, EndOfRequest]
    assert c.state is State.CLOSED
    assert c.receive(smuggled) == []


def test_http10_closes_unless_keep_alive() -> None:
    c = conn()
    c.receive(b"GET / HTTP/1.0\r\n\r\n")
    assert c.state is State.CLOSED
    c = conn()
    c.receive(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert c.state is State.IDLE


def test_expect_continue_is_reported() -> None:
    events = feed(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    head = events[0]
    assert isinstance(head, RequestReceived)
    assert head.head.expect_continue
    assert len(events) == 1


SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n0\r\n\r\n",
    "dup_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "same_dup_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
    b"Content-Length: 4\r\n\r\nabcd",
    "cl_list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd",
    "cl_sign": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
    "te_space_colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te_obs_fold": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "te_dup": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad_chunk": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
    "chunk_overflow": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"10000000000000001\r\na\r\n0\r\n\r\n",
    "chunk_no_crlf": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"1\r\naX0\r\n\r\n",
    "te_on_http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "nul_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "cr_in_value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
    "no_host": b"GET / HTTP/1.1\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "space_in_target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "http09": b"GET /\r\n\r\n",
    "empty_name": b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_vectors_are_refused_with_400(name: str) -> None:
    for step in (1, 4096):
        events = feed(SMUGGLING[name], step=step)
        assert rejected(events).status == 400
        assert not any(isinstance(e, EndOfRequest) for e in events)


@pytest.mark.parametrize(
    ("te", "status"),
    [(b"gzip, chunked", 501), (b"xchunked", 501), (b"chunked, gzip", 400), (b"identity", 501)],
)
def test_transfer_codings_other_than_chunked_are_refused(te: bytes, status: int) -> None:
    req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + te + b"\r\n\r\n0\r\n\r\n"
    assert rejected(feed(req)).status == status


def test_limits_map_to_414_431_413() -> None:
    long_uri = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert rejected(feed(long_uri, max_uri_bytes=50)).status == 414
    assert rejected(feed(long_uri, step=1, max_uri_bytes=50)).status == 414
    big_head = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 500 + b"\r\n\r\n"
    assert rejected(feed(big_head, max_head_bytes=200)).status == 431
    assert rejected(feed(big_head, step=7, max_head_bytes=200)).status == 431
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 10 + b"\r\n"
    assert rejected(feed(many, max_headers=5)).status == 431
    post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n"
    assert rejected(feed(post, max_body_bytes=10)).status == 413
    chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n" + b"x" * 32
    assert rejected(feed(chunked, max_body_bytes=10)).status == 413


def test_endless_chunk_extensions_are_bounded() -> None:
    c = conn(max_head_bytes=1000)
    c.receive(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;")
    events: list[Event] = []
    for _ in range(100):
        events += c.receive(b"x" * 100)
        if c.state is State.ERROR:
            break
    assert rejected(events).status in (400, 431)


def test_version_and_method_refusals() -> None:
    assert rejected(feed(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")).status == 505
    assert rejected(feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n")).status == 501
    expect = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\nContent-Length: 0\r\n\r\n"
    assert rejected(feed(expect)).status == 417


def test_header_timeout_rejects_with_408() -> None:
    clock = VirtualClock()
    c = ServerConnection(clock=clock, limits=Limits(header_timeout=5.0))
    assert c.header_deadline() is None
    c.receive(b"GET / HTTP/1.1\r\nHo")
    assert c.header_deadline() == 5.0
    assert c.check_timeout(4.9) is None
    timeout = c.check_timeout(5.0)
    assert timeout is not None
    assert timeout.status == 408
    assert c.receive(b"st: a\r\n\r\n") == []


def test_timeout_does_not_apply_between_requests_or_to_bodies() -> None:
    c = conn(header_timeout=1.0)
    c.receive(GET)
    assert c.header_deadline() is None
    c.receive(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
    assert c.check_timeout(100.0) is None


def test_eof_mid_request_is_an_error_and_idle_eof_is_not() -> None:
    c = conn()
    c.receive(GET)
    assert c.receive(b"") == []
    c = conn()
    c.receive(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab")
    assert rejected(c.receive(b"")).status == 400


def test_upgrade_switches_to_tunnel() -> None:
    c = conn()
    events = c.receive(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw"
    )
    head = events[0]
    assert isinstance(head, RequestReceived)
    assert head.head.upgrade == b"websocket"
    assert events[-1] == Upgraded(b"raw")
    assert c.receive(b"more") == [Body(b"more")]


# -- property tests: adversarial input never crashes, never smuggles -----------

TOKENS = [
    b"GET",
    b"POST",
    b" ",
    b"/",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b"Host",
    b"Content-Length",
    b"Transfer-Encoding",
    b"chunked",
    b"0",
    b"5",
    b"-1",
    b"ffffffffffffffffff",
    b",",
    b"\t",
    b"\x00",
    b"hello",
    b"Connection",
    b"close",
    b"Expect",
    b"100-continue",
]

adversarial = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=8)), max_size=60).map(
    b"".join
)


@settings(max_examples=400, deadline=None)
@given(adversarial, st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_never_crash(data: bytes, step: int) -> None:
    events = feed(data, step=step, max_head_bytes=512, max_body_bytes=64)
    for event in events:
        if isinstance(event, Rejected):
            assert 400 <= event.status < 600
            assert event is events[-1]


prefix = b"POST / HTTP/1.1\r\nHost: a\r\n"
framing_headers = st.lists(
    st.tuples(
        st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"content-length"]),
        st.sampled_from([b"5", b"6", b"0", b"chunked", b" chunked", b"5, 6", b"gzip, chunked"]),
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(framing_headers, st.integers(min_value=1, max_value=50))
def test_accepted_framing_is_unambiguous(headers: list[tuple[bytes, bytes]], step: int) -> None:
    """A request is accepted only if its framing has exactly one reading."""
    fields = b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    body = b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    events = feed(prefix + fields + b"\r\n" + body, step=step)
    names = [n.lower() for n, _ in headers]
    heads = [e.head for e in events if isinstance(e, RequestReceived)]
    if not heads:
        assert isinstance(events[-1], Rejected)
        return
    first = heads[0]
    if b"transfer-encoding" in names:
        assert names.count(b"transfer-encoding") == 1
        assert b"content-length" not in names
        assert first.chunked
        assert first.content_length is None
    else:
        assert len({v for n, v in headers if n.lower() == b"content-length"}) == 1
        assert first.content_length is not None
        assert not first.chunked
