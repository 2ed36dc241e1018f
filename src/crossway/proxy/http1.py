# HTTP/1.1 request parsing as a pure, sans-IO state machine.
#
# Theory of operation
# -------------------
# `ServerConnection` wraps one httptools (llhttp) request parser per client
# connection. The driver feeds it the bytes it read (`receive`) and gets back a
# list of events: `RequestReceived` (the head), `Body` (a piece of the body as
# it arrives, never buffered whole), `EndOfRequest`, `Upgraded` (the rest of
# the stream belongs to a tunnel) or `Rejected` (the request is refused with a
# 4xx/5xx status). The driver owns the socket, the clock's timers and writing
# responses; this module never does I/O and never sleeps.
#
# llhttp runs in strict mode (no leniency flags), which already refuses the
# classic smuggling vectors: Content-Length together with Transfer-Encoding,
# duplicate Content-Length, non-numeric lengths, bad chunk sizes, obs-fold,
# whitespace before the colon, bare CR/LF and NUL in fields. On top of it this
# module refuses what llhttp lets through but a proxy must not forward:
# a Transfer-Encoding other than exactly `chunked`, Transfer-Encoding on
# HTTP/1.0, a missing or repeated Host on HTTP/1.1, versions other than 1.0 and
# 1.1, CONNECT, and unknown Expect values.
#
# Invariants
# ----------
# Rule 1: after `Rejected` the connection is dead; every later `receive`
#         returns nothing. The driver answers the status and closes, so no byte
#         after the bad one is ever interpreted as a request.
# Rule 2: bytes after a request that ends the connection (Connection: close,
#         HTTP/1.0 without keep-alive) are never parsed, so nothing smuggled
#         behind such a request can be forwarded.
# Rule 3: memory is bounded per connection: the head is fed to llhttp in
#         slices so it never holds more than `max_head_bytes` of request line
#         and headers; non-body bytes of a chunked body (chunk headers,
#         trailers) are bounded the same way; body bytes are handed out as
#         they are parsed. The parser buffers at most one `receive` worth of
#         events, so the driver bounds memory by pausing reads.
# Rule 4: framing is re-derived, never copied: the head reports either a
#         Content-Length or `chunked`, and the driver re-frames the body when
#         forwarding, so the upstream sees exactly the message boundaries this
#         parser saw.
#
# Pipelined requests are parsed in order; their events come out in order and
# the driver serves them one after another. Header names are lowercased on the
# way in (HTTP field names are case-insensitive; it makes lookups cheap).
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import httptools

from crossway.core.clock import Clock

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection parsing limits; exceeding one rejects the request."""

    max_uri_bytes: int = 8 * 1024
    max_head_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_bytes: int | None = None
    header_timeout: float = 10.0


@dataclass(slots=True)
class RequestHead:
    """A parsed request head; `headers` has lowercased names and no trailers."""

    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    upgrade: bytes | None
    host: bytes | None

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


# The events made per request or per body piece are plain slotted
# dataclasses: a frozen one's __init__ costs twice as much, on the hot path.
# Nothing mutates an event after it is made.
@dataclass(slots=True)
class RequestReceived:
    head: RequestHead


@dataclass(slots=True)
class Body:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfRequest:
    pass


@dataclass(frozen=True, slots=True)
class Upgraded:
    """The request switched protocols; `tail` is the first tunnel bytes."""

    tail: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """The request is refused; answer `status` and close the connection."""

    status: int
    code: str
    detail: str


Event = RequestReceived | Body | EndOfRequest | Upgraded | Rejected
END_OF_REQUEST = EndOfRequest()


class State(Enum):
    IDLE = "idle"  # between requests, no byte of the next one seen
    HEAD = "head"  # reading request line and headers
    BODY = "body"  # head delivered, body (possibly empty) in progress
    CLOSED = "closed"  # last request ended the connection; ignore the rest
    TUNNEL = "tunnel"  # upgraded; bytes are no longer HTTP
    ERROR = "error"  # rejected; ignore the rest


class _Refuse(Exception):
    """Raised inside a parser callback to abort parsing with a rejection."""


_BAD_REQUEST = (400, "bad_request")


class _Draft:
    """What the callbacks accumulate for the request being parsed (a plain
    class: made per request, and a dataclass's field factories cost more)."""

    __slots__ = (
        "body_bytes",
        "content_length",
        "expect",
        "head_bytes",
        "headers",
        "host",
        "hosts",
        "te",
        "upgrade",
        "url",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: Headers = []
        self.head_bytes = 0
        self.content_length: int | None = None
        self.te: bytes | None = None
        self.hosts = 0
        self.host: bytes | None = None
        self.expect: bytes | None = None
        self.upgrade: bytes | None = None
        self.body_bytes = 0


class ServerConnection:
    """Sans-IO HTTP/1.1 server side of one client connection.

    `receive(data)` returns the events the bytes complete; `receive(b"")` means
    the client closed its side. `check_timeout(now)` rejects with 408 a head
    that has been arriving for longer than `limits.header_timeout`. Nothing
    here raises on bad input: every malformed request becomes `Rejected`.
    """

    def __init__(self, *, clock: Clock, limits: Limits | None = None) -> None:
        self._clock = clock
        self._limits = limits or Limits()
        self._parser = httptools.HttpRequestParser(self)
        self._state = State.IDLE
        self._draft = _Draft()
        self._events: list[Event] = []
        self._reject: Rejected | None = None
        self._head_started = 0.0
        self._overhead = 0

    @property
    def state(self) -> State:
        return self._state

    def header_deadline(self) -> float | None:
        """Clock time by which the current head must be complete, if one is arriving."""
        if self._state is not State.HEAD:
            return None
        return self._head_started + self._limits.header_timeout

    def check_timeout(self, now: float) -> Rejected | None:
        deadline = self.header_deadline()
        if deadline is None or now < deadline:
            return None
        self._state = State.ERROR
        return Rejected(408, "request_timeout", "request head not received in time")

    def receive(self, data: bytes) -> list[Event]:
        state = self._state
        if state is State.ERROR or state is State.CLOSED:
            return []
        if state is State.TUNNEL:
            return [Body(data)] if data else []
        if not data:
            return self._eof()
        if state is State.IDLE:
            self._begin_head()
        events: list[Event] = []
        self._events = events
        self._feed(data)
        return events

    # -- feeding -------------------------------------------------------------

    def _begin_head(self) -> None:
        self._state = State.HEAD
        self._head_started = self._clock.now()
        self._draft = _Draft()
        self._overhead = 0

    def _feed(self, data: bytes) -> None:
        if self._state is State.HEAD:
            # Rule 3: never hand llhttp more head than the limit allows.
            allowance = self._limits.max_head_bytes - self._draft.head_bytes + 1
            if len(data) > allowance:
                self._feed_bounded(data, allowance)
                return
        self._parse(data)

    def _feed_bounded(self, data: bytes, allowance: int) -> None:
        if not self._parse(data[:allowance]):
            return
        if self._state is State.HEAD:
            self._head_too_large()
            return
        self._parse(data[allowance:])

    def _parse(self, data: bytes) -> bool:
        """Feed llhttp; returns False when the connection stopped being HTTP."""
        if self._state is State.HEAD:
            self._draft.head_bytes += len(data)
        body_before = self._draft.body_bytes
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._switch(data[upgrade.args[0] :])
            return False
        except httptools.HttpParserError as error:
            self._parse_failed(error)
            return False
        return self._track_overhead(len(data), self._draft.body_bytes - body_before)

    def _track_overhead(self, fed: int, body: int) -> bool:
        if self._state is not State.BODY or self._draft.te is None:
            return self._state is not State.ERROR
        # Rule 3 for chunked bodies: chunk headers and trailers arriving
        # without body bytes between them must not grow without bound.
        self._overhead = 0 if body else self._overhead + fed
        if self._overhead > self._limits.max_head_bytes:
            self._fail(431, "header_fields_too_large", "chunk framing or trailers too large")
            return False
        return True

    def _parse_failed(self, error: Exception) -> None:
        if self._state is State.CLOSED:
            return  # Rule 2: llhttp refused bytes after a closing request
        if self._reject is not None:
            self._events.append(self._reject)
        elif self._state is not State.ERROR:
            self._fail(*_BAD_REQUEST, f"malformed request: {error}")

    def _switch(self, tail: bytes) -> None:
        if self._state is State.ERROR:
            return
        self._state = State.TUNNEL
        self._events.append(Upgraded(tail))

    def _eof(self) -> list[Event]:
        state = self._state
        self._state = State.CLOSED
        if state is State.IDLE:
            return []
        self._events = []
        self._fail(*_BAD_REQUEST, "connection closed mid-request")
        return self._events

    def _head_too_large(self) -> None:
        if not self._draft.headers and len(self._draft.url) >= self._limits.max_uri_bytes:
            self._fail(414, "uri_too_long", "request target too long")
        else:
            self._fail(431, "header_fields_too_large", "request head too large")

    def _fail(self, status: int, code: str, detail: str) -> Rejected:
        rejected = Rejected(status, code, detail)
        self._state = State.ERROR
        self._events.append(rejected)
        return rejected

    def _refuse(self, status: int, code: str, detail: str) -> _Refuse:
        self._reject = Rejected(status, code, detail)
        self._state = State.ERROR
        return _Refuse(detail)

    # -- llhttp callbacks (called from inside feed_data) -------------------

    def on_message_begin(self) -> None:
        if self._state is State.IDLE:
            self._begin_head()  # a pipelined request in the same read

    def on_url(self, url: bytes) -> None:
        draft = self._draft
        draft.url += url
        if len(draft.url) > self._limits.max_uri_bytes:
            raise self._refuse(414, "uri_too_long", "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state is not State.HEAD:
            return  # a trailer: bounded by _track_overhead, never forwarded
        draft = self._draft
        if len(draft.headers) >= self._limits.max_headers:
            raise self._refuse(431, "header_fields_too_large", "too many header fields")
        name = name.lower()
        draft.headers.append((name, value))
        if name in _FRAMING:
            _FRAMING[name](self, draft, value)

    def on_headers_complete(self) -> None:
        draft = self._draft
        head = self._check_head(draft)
        self._state = State.BODY
        self._events.append(RequestReceived(head))

    def on_body(self, body: bytes) -> None:
        draft = self._draft
        draft.body_bytes += len(body)
        limit = self._limits.max_body_bytes
        if limit is not None and draft.body_bytes > limit:
            raise self._refuse(413, "payload_too_large", "request body too large")
        self._events.append(Body(body))

    def on_message_complete(self) -> None:
        self._events.append(END_OF_REQUEST)
        parser = self._parser
        keep = parser.should_keep_alive() and not parser.should_upgrade()
        self._state = State.IDLE if keep else State.CLOSED

    # -- head validation ---------------------------------------------------

    def _check_head(self, draft: _Draft) -> RequestHead:
        parser = self._parser
        version = parser.get_http_version()
        method = parser.get_method()
        self._check_version(version, draft)
        self._check_semantics(method, draft)
        return RequestHead(  # positional: keywords cost more, once per request
            method,
            draft.url,
            _VERSIONS.get(version) or version.encode(),
            draft.headers,
            draft.content_length,
            draft.te is not None,
            parser.should_keep_alive(),
            draft.expect is not None,
            draft.upgrade if draft.upgrade is not None and parser.should_upgrade() else None,
            draft.host,
        )

    def _check_version(self, version: str, draft: _Draft) -> None:
        if version == "1.1":
            if draft.hosts != 1:
                raise self._refuse(*_BAD_REQUEST, "HTTP/1.1 needs exactly one Host header")
            return
        if version != "1.0":
            if version.startswith("0."):
                raise self._refuse(*_BAD_REQUEST, "HTTP/0.9 is not supported")
            raise self._refuse(505, "version_not_supported", f"HTTP/{version} not supported")
        if draft.te is not None:
            raise self._refuse(*_BAD_REQUEST, "Transfer-Encoding on HTTP/1.0")
        if draft.hosts > 1:
            raise self._refuse(*_BAD_REQUEST, "repeated Host header")

    def _check_semantics(self, method: bytes, draft: _Draft) -> None:
        if method == b"CONNECT":
            raise self._refuse(501, "not_implemented", "CONNECT is not supported")
        if draft.te is not None and draft.te.strip().lower() != b"chunked":
            raise self._refuse(501, "not_implemented", "only chunked transfer coding")
        if draft.expect is not None and draft.expect.strip().lower() != b"100-continue":
            raise self._refuse(417, "expectation_failed", "unsupported Expect value")
        limit = self._limits.max_body_bytes
        length = draft.content_length
        if limit is not None and length is not None and length > limit:
            raise self._refuse(413, "payload_too_large", "request body too large")


# -- framing-relevant header handlers (called once per such header) ------


def _on_content_length(conn: ServerConnection, draft: _Draft, value: bytes) -> None:
    # llhttp already refused duplicates and non-digits; this only records it.
    draft.content_length = int(value.strip())


def _on_transfer_encoding(conn: ServerConnection, draft: _Draft, value: bytes) -> None:
    if draft.te is not None:
        raise conn._refuse(*_BAD_REQUEST, "repeated Transfer-Encoding")
    draft.te = value


def _on_host(conn: ServerConnection, draft: _Draft, value: bytes) -> None:
    draft.hosts += 1
    draft.host = value.strip()


def _on_expect(conn: ServerConnection, draft: _Draft, value: bytes) -> None:
    if draft.expect is not None:
        raise conn._refuse(*_BAD_REQUEST, "repeated Expect header")
    draft.expect = value


def _on_upgrade(conn: ServerConnection, draft: _Draft, value: bytes) -> None:
    draft.upgrade = value.strip()


_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}

_FRAMING = {
    b"content-length": _on_content_length,
    b"transfer-encoding": _on_transfer_encoding,
    b"host": _on_host,
    b"expect": _on_expect,
    b"upgrade": _on_upgrade,
}
