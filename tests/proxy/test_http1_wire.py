from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.proxy.http1 import Body
from crossway.proxy.http1_wire import (
    EndOfResponse,
    Framing,
    ResponseEvent,
    ResponseParser,
    ResponseReceived,
    UpstreamError,
    encode_chunk,
    encode_head,
    request_line,
    status_line,
)


def parse(data: bytes, method: bytes = b"GET", step: int = 10_000) -> list[ResponseEvent]:
    parser = ResponseParser()
    parser.expect(method)
    events: list[ResponseEvent] = []
    for i in range(0, len(data), step):
        events += parser.receive(data[i : i + step])
    return events


def body(events: list[ResponseEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Body))


def test_encode_head_writes_the_chosen_framing() -> None:
    head = encode_head(request_line(b"GET", b"/x"), [(b"host", b"a")], Framing.LENGTH, 3)
    assert head == b"GET /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\n"
    head = encode_head(status_line(404), [], Framing.CHUNKED, None)
    assert head == b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
    assert encode_chunk(b"abc") == b"3\r\nabc\r\n"
    assert encode_chunk(b"") == b""


@pytest.mark.parametrize("step", [1, 9, 10_000])
def test_length_and_chunked_responses(step: int) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello"
    events = parse(data, step=step)
    head = events[0]
    assert isinstance(head, ResponseReceived)
    assert head.head.framing is Framing.LENGTH
    assert (b"x", b"y") in head.head.headers
    assert body(events) == b"hello"
    assert isinstance(events[-1], EndOfResponse)
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"
    events = parse(data, step=step)
    assert body(events) == b"hello"
    assert isinstance(events[-1], EndOfResponse)


def test_head_response_has_no_body_and_connection_stays_usable() -> None:
    parser = ResponseParser()
    parser.expect(b"HEAD")
    events = parser.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n")
    assert isinstance(events[-1], EndOfResponse)
    assert parser.reusable
    parser.expect(b"GET")
    events = parser.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert body(events) == b"ok"
    assert parser.reusable


def test_interim_responses_are_skipped() -> None:
    events = parse(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    )
    statuses = [e.head.status for e in events if isinstance(e, ResponseReceived)]
    assert statuses == [201]


def test_close_delimited_body_ends_at_eof_and_is_not_reusable() -> None:
    parser = ResponseParser()
    parser.expect(b"GET")
    events = parser.receive(b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert isinstance(events[0], ResponseReceived)
    assert events[0].head.framing is Framing.CLOSE
    assert parser.receive(b"") == [EndOfResponse()]
    assert not parser.reusable


def test_truncated_response_is_an_error() -> None:
    parser = ResponseParser()
    parser.expect(b"GET")
    parser.receive(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    events = parser.receive(b"")
    assert isinstance(events[-1], UpstreamError)
    assert parser.broken


def test_stray_bytes_after_a_response_break_the_connection() -> None:
    parser = ResponseParser()
    parser.expect(b"GET")
    parser.receive(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert parser.reusable
    assert isinstance(parser.receive(b"HTTP/1.1 200 OK\r\n")[-1], UpstreamError)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=40))
def test_garbage_from_upstream_never_crashes(data: bytes, step: int) -> None:
    events = parse(b"HTTP/1.1 " + data, step=step)
    assert all(
        isinstance(e, ResponseReceived | Body | EndOfResponse | UpstreamError) for e in events
    )
