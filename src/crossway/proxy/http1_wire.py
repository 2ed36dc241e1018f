# HTTP/1.1 on the upstream side, sans-IO: encoding message heads and bodies,
# and parsing the responses an upstream sends back.
#
# Theory of operation
# -------------------
# The engine never copies framing from one side to the other (http1.py,
# Rule 4). It decides a `Framing` for each message it sends — a length,
# chunked, or close-delimited (only towards an HTTP/1.0 client, which cannot
# read chunked) — and writes it with the encoders here.
#
# `ResponseParser` is the upstream mirror of `ServerConnection`: bytes in,
# events out (`ResponseReceived`, `Body`, `EndOfResponse`, `UpstreamError`).
# The caller announces each request with `expect(method)` so a response to
# HEAD is known to have no body whatever its Content-Length says; llhttp cannot
# be told that, so the parser stops after the head and starts a fresh llhttp
# instance for the next response. Interim 1xx responses other than 101 are
# skipped (the engine answers 100-continue to the client itself); a 101
# switches the parser to `tunnel` mode, where every byte is handed on as
# `Body` untouched and end of stream is `EndOfResponse`.
#
# Invariants
# ----------
# - A response whose framing is ambiguous or malformed yields
#   `UpstreamError`, after which the connection must be closed, never reused.
# - `reusable` is true only after a complete response on a keep-alive
#   connection with no stray bytes, so a pooled connection never carries the
#   tail of an earlier response into the next one.
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus

import httptools

from crossway.proxy.http1 import Body, Headers

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class Framing(Enum):
    NONE = "none"  # no body on the wire
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"
    CLOSE = "close"  # body ends when the connection closes


def encode_head(start_line: bytes, headers: Headers, framing: Framing, length: int | None) -> bytes:
    """A message head with the framing header the engine decided on."""
    head = start_line + b"\r\n"
    if headers:
        head += b"\r\n".join([name + b": " + value for name, value in headers]) + b"\r\n"
    if framing is Framing.LENGTH:
        head += b"content-length: %d\r\n" % (length or 0)
    elif framing is Framing.CHUNKED:
        head += b"transfer-encoding: chunked\r\n"
    return head + b"\r\n"


def request_line(method: bytes, target: bytes) -> bytes:
    return method + b" " + target + b" HTTP/1.1"


def status_line(status: int, version: bytes = b"1.1") -> bytes:
    if version == b"1.1":
        line = _STATUS_LINES.get(status)
        if line is not None:
            return line
    reason = _REASONS.get(status, b"Unknown")
    return b"HTTP/" + version + b" " + str(status).encode() + b" " + reason


_STATUS_LINES = {s: b"HTTP/1.1 %d %b" % (s, reason) for s, reason in _REASONS.items()}


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(slots=True)
class ResponseHead:
    status: int
    headers: Headers
    content_length: int | None
    chunked: bool
    keep_alive: bool
    no_body: bool

    @property
    def framing(self) -> Framing:
        if self.no_body:
            return Framing.NONE
        if self.chunked:
            return Framing.CHUNKED
        return Framing.CLOSE if self.content_length is None else Framing.LENGTH


@dataclass(slots=True)  # not frozen: made per response (see http1.py's events)
class ResponseReceived:
    head: ResponseHead


@dataclass(frozen=True, slots=True)
class EndOfResponse:
    pass


@dataclass(frozen=True, slots=True)
class UpstreamError:
    detail: str


ResponseEvent = ResponseReceived | Body | EndOfResponse | UpstreamError
END_OF_RESPONSE = EndOfResponse()


class _HeadDone(Exception):
    """Stops llhttp after the head of a response that has no body."""


class ResponseParser:
    """Sans-IO parser for the responses on one upstream connection."""

    def __init__(self, *, max_head_bytes: int = 64 * 1024) -> None:
        self._max_head = max_head_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._events: list[ResponseEvent] = []
        self._headers: Headers = []
        self._head_bytes = 0
        self._method = b"GET"
        self._in_body = False
        self._head: ResponseHead | None = None
        self.reusable = False
        self.broken = False
        self.tunnel = False  # after a 101: bytes are the upgraded protocol's

    def expect(self, method: bytes) -> None:
        """Announce the request whose response comes next."""
        self._method = method
        self._head = None
        self.reusable = False

    def receive(self, data: bytes) -> list[ResponseEvent]:
        """Events completed by `data`; `b""` means the upstream closed."""
        if self.broken:
            return []
        if self.tunnel:
            return [Body(data)] if data else [END_OF_RESPONSE]
        events: list[ResponseEvent] = []
        self._events = events
        if not data:
            self._eof()
        else:
            self._feed(data)
        return events

    def _feed(self, data: bytes) -> None:
        if self.reusable:
            self._broke("bytes after a complete response")
            return
        if not self._in_body:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if not self.tunnel:
                self._broke("unexpected protocol switch")
            elif tail := data[upgrade.args[0] :]:
                self._events.append(Body(tail))
        except httptools.HttpParserError as error:
            # httptools reports a callback's exception as the error's context.
            if isinstance(error.__context__, _HeadDone):
                self._fresh_parser()
            else:
                self._broke(f"malformed response: {error}")
            return
        # Checked after feeding: the read that completes a head may carry
        # body bytes too. llhttp holds at most one read beyond the limit.
        if not self._in_body and self._head_bytes > self._max_head:
            self._broke("response head too large")

    def _eof(self) -> None:
        head = self._head
        if head is not None and self._in_body and head.framing is Framing.CLOSE:
            self._finish(reusable=False)
            return
        self._broke("upstream closed the connection mid-response")

    def _broke(self, detail: str) -> None:
        self.broken = True
        self.reusable = False
        self._events.append(UpstreamError(detail))

    def _fresh_parser(self) -> None:
        self._parser = httptools.HttpResponseParser(self)

    def _finish(self, *, reusable: bool) -> None:
        self._in_body = False
        self._head_bytes = 0
        self._headers = []
        self.reusable = reusable
        self._events.append(END_OF_RESPONSE)

    # -- llhttp callbacks --------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_body:
            self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._headers = []  # interim response: wait for the final one
            return
        head = self._make_head(status)
        self._head = head
        self._in_body = True
        self.tunnel = status == 101 and self._method != b"HEAD"
        self._events.append(ResponseReceived(head))
        if self._method == b"HEAD":
            self._finish(reusable=head.keep_alive)
            raise _HeadDone

    def on_body(self, body: bytes) -> None:
        self._events.append(Body(body))

    def on_message_complete(self) -> None:
        if self._in_body and not self.tunnel:
            head = self._head
            self._finish(reusable=head is not None and head.keep_alive)

    def _make_head(self, status: int) -> ResponseHead:
        length: int | None = None
        chunked = False
        for name, value in self._headers:
            if name == b"content-length":
                length = int(value.strip())
            elif name == b"transfer-encoding":
                chunked = value.rstrip().lower().endswith(b"chunked")
        no_body = self._method == b"HEAD" or status in (101, 204, 304)
        return ResponseHead(  # positional: keywords cost more, once per response
            status, self._headers, length, chunked, self._parser.should_keep_alive(), no_body
        )
