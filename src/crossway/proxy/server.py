# The HTTP/1.1 driver: an asyncio Protocol per client connection.
#
# Theory of operation
# -------------------
# `Http1Protocol` feeds what it reads to the sans-IO `ServerConnection`
# (http1.py) and queues the events in an `Inbox`. One coroutine per
# connection (`_serve`) takes requests from the queue in order — pipelined
# requests wait their turn — wraps each in an `Http1Stream` and awaits the
# handler. The stream decides response framing (Content-Length when known,
# chunked for HTTP/1.1, close-delimited for HTTP/1.0) and answers
# `Expect: 100-continue` when the handler first reads the body.
#
# One timer per connection enforces the header read timeout (408) and the
# keep-alive idle timeout, re-armed when it fires rather than per request.
#
# Invariants
# ----------
# - Memory per connection is bounded: reads pause when the Inbox holds more
#   than its high-water mark; writes await the transport's drain.
# - A request whose body the handler did not consume, a rejected request, a
#   response the handler abandoned, and `Connection: close` all end the
#   connection after the response: the next bytes cannot be trusted to start
#   a request.
# - Nothing a client sends raises out of this module: malformed input is a
#   4xx answer and a close; a handler's unexpected exception is a 500 (or an
#   abort if the response had started).
from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Protocol, cast

from crossway.core.clock import Clock, SystemClock
from crossway.proxy.errors import GatewayError, render, render_rejected
from crossway.proxy.flow import Inbox, WriteGate
from crossway.proxy.headers import Headers, Peer
from crossway.proxy.http1 import (
    END_OF_REQUEST,
    Body,
    EndOfRequest,
    Event,
    Limits,
    Rejected,
    RequestHead,
    RequestReceived,
    ServerConnection,
    State,
    Upgraded,
)
from crossway.proxy.http1_wire import (
    CONTINUE,
    LAST_CHUNK,
    Framing,
    encode_chunk,
    encode_head,
    status_line,
)
from crossway.proxy.stream import ClientBodyError, Handler

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Per-listener limits; `parse` is applied to every request."""

    parse: Limits = field(default_factory=Limits)
    keepalive_timeout: float = 75.0
    max_connections: int = 10_000


class FastStarter(Protocol):
    """A handler's fast path: begin answering a bodiless request without a
    coroutine. True: it will call the stream's `settle` once the answer is
    written, or `resume` with the coroutine that finishes it; False: serve
    the request the usual way (nothing was done)."""

    def start(self, stream: Http1Stream) -> bool: ...


@dataclass(slots=True)
class Resume:
    """A request whose exchange began outside the connection's task (the
    handler's fast path) and is finished inside it, in its turn."""

    stream: Http1Stream
    work: Callable[[], Awaitable[None]]


class Http1Stream:
    """One request/response exchange on an HTTP/1.1 connection."""

    __slots__ = (
        "_conn",
        "_continue",
        "_done",
        "_framing",
        "_held",
        "head",
        "peer",
        "response_started",
    )

    def __init__(self, conn: Http1Protocol, head: RequestHead, peer: Peer) -> None:
        self._conn = conn
        self.head = head
        self.peer = peer
        self.response_started = False
        self._framing = Framing.NONE
        self._held = b""  # a deferred response head, sent with the first body bytes
        self._done = not head.has_body
        self._continue = head.expect_continue

    @property
    def body_done(self) -> bool:
        return self._done

    async def read(self) -> bytes | None:
        """Next body piece or None at the end; raises ClientBodyError, ConnectionError."""
        if self._done:
            return None
        if self._continue:
            self._continue = False
            if not self.response_started:
                self._conn.write(CONTINUE)
        event = await self._conn.next_event()
        if isinstance(event, Body):
            return event.data
        self._done = True
        if isinstance(event, EndOfRequest):
            return None
        if isinstance(event, Rejected):
            raise ClientBodyError(event)
        raise ConnectionResetError("client closed mid-request")

    def start_response(
        self,
        status: int,
        headers: Headers,
        *,
        length: int | None,
        no_body: bool = False,
        defer: bool = False,
    ) -> None:
        self.response_started = True
        head = self.head
        if no_body or status in (204, 304) or head.method == b"HEAD":
            framing = Framing.NONE
        elif length is not None:
            framing = Framing.LENGTH
        else:
            framing = Framing.CHUNKED if head.version == b"1.1" else Framing.CLOSE
        if framing is Framing.CLOSE or not head.keep_alive or not self._done:
            self._conn.must_close = True
            headers.append((b"connection", b"close"))
        elif head.version == b"1.0":
            headers.append((b"connection", b"keep-alive"))
        wire = framing if framing is not Framing.NONE or length is None else Framing.LENGTH
        self._framing = framing
        wire_head = encode_head(status_line(status, b"1.1"), headers, wire, length)
        if defer:
            self._held = wire_head  # one write (one syscall) for head and body
        else:
            self._conn.write(wire_head)

    async def write(self, data: bytes) -> None:
        """Send body bytes; waits while the client is slow; raises ConnectionError if gone."""
        framing = self._framing
        if framing is Framing.NONE or not data:
            return
        wire = encode_chunk(data) if framing is Framing.CHUNKED else data
        if self._held:
            wire, self._held = self._held + wire, b""
        conn = self._conn
        conn.write(wire)
        if conn.gate.blocked:
            await conn.gate.drain()

    def finish(self) -> None:
        tail = LAST_CHUNK if self._framing is Framing.CHUNKED else b""
        if self._held or tail:
            self._conn.write(self._held + tail)
            self._held = b""

    def abort(self) -> None:
        self._conn.must_close = True
        self._conn.abort()

    def start_tunnel(self, headers: Headers) -> None:
        self.response_started = True
        self._conn.must_close = True  # the connection ends with the tunnel
        self._conn.write(encode_head(status_line(101), headers, Framing.NONE, None))

    async def tunnel_read(self) -> bytes | None:
        while True:
            event = await self._conn.next_event()
            if event is None:
                return None
            if isinstance(event, Upgraded):
                if event.tail:
                    return event.tail
            elif isinstance(event, Body):
                return event.data
            elif not isinstance(event, EndOfRequest):
                return None

    async def tunnel_write(self, data: bytes) -> None:
        self._conn.write(data)
        await self._conn.gate.drain()

    def send_local(self, response: bytes, *, close: bool = False) -> None:
        self.response_started = True
        if close or not self._done or not self.head.keep_alive:
            self._conn.must_close = True
        self._conn.write(response)

    # -- the fast path (`FastStarter`) -------------------------------------

    def respond(
        self, status: int, headers: Headers, body: bytes, *, length: int | None, no_body: bool
    ) -> None:
        """A whole response in one write: `start_response`, `write`, `finish`."""
        self.start_response(status, headers, length=length, no_body=no_body, defer=True)
        framing = self._framing
        if framing is Framing.NONE or not body:
            wire = LAST_CHUNK if framing is Framing.CHUNKED else b""
        elif framing is Framing.CHUNKED:
            wire = encode_chunk(body) + LAST_CHUNK
        else:
            wire = body
        self._conn.write(self._held + wire)
        self._held = b""

    def settle(self) -> None:
        """The exchange begun by the fast path is over."""
        self._conn.fast_settled()

    def resume(self, work: Callable[[], Awaitable[None]]) -> None:
        """Finish the exchange begun by the fast path in the connection's task."""
        self._conn.fast_resumed(Resume(self, work))


class Http1Protocol(asyncio.Protocol):
    """The server side of one client connection."""

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._clock = server.clock
        self._parser = ServerConnection(clock=server.clock, limits=server.limits.parse)
        self.gate = WriteGate()
        self.must_close = False
        self._transport: asyncio.Transport | None = None
        self._inbox: Inbox[Event | Resume] | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = float("inf")
        self._last_active = 0.0
        self._busy = False
        self._peer = Peer(address="")
        self._request_peer = self._peer  # the last request's (host, version)
        self._starter: FastStarter | None = server.starter
        self._fast = False  # an exchange begun by the fast path is in flight
        self._held: list[Event] = []  # what arrived meanwhile
        self._eof = False  # the client's end of input, held meanwhile

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._inbox = Inbox(self._transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else "unknown"
        scheme = b"https" if transport.get_extra_info("sslcontext") else b"http"
        self._peer = self._request_peer = Peer(address=address, scheme=scheme)
        self._server.connection_opened(self)
        self._last_active = self._clock.now()
        self._arm_timer(self._server.limits.keepalive_timeout)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        assert self._inbox is not None
        parser = self._parser
        events = parser.receive(data)
        if self._fast:
            # A request is being answered outside the task: what follows
            # waits its turn, and reading stops until then (bounded memory).
            self._held.extend(events)
            if self._transport is not None:
                self._transport.pause_reading()
        elif not self._start_fast(events):
            self._inbox.put(events)
        if parser.state is State.HEAD:
            deadline = parser.header_deadline()
            if deadline is not None and deadline < self._timer_due:
                self._arm_timer(deadline - self._clock.now())

    def eof_received(self) -> bool:
        if self._fast:
            self._eof = True  # taken in its turn, after the exchange in flight
        else:
            self._take_eof()
        return True  # keep our side open so a response can still be written

    def _take_eof(self) -> None:
        assert self._inbox is not None
        self._inbox.put(self._parser.receive(b""))
        self._inbox.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.lose()
        if self._inbox is not None:
            self._inbox.close()
        if self._timer is not None:
            self._timer.cancel()
        self._server.connection_closed(self)

    def pause_writing(self) -> None:
        self.gate.pause()

    def resume_writing(self) -> None:
        self.gate.resume()

    # -- the fast path ---------------------------------------------------------

    def _start_fast(self, events: list[Event]) -> bool:
        """Offer a lone bodiless request, read whole while the connection is
        idle, to the handler's fast path (`FastStarter`)."""
        if (
            len(events) != 2
            or events[1] is not END_OF_REQUEST
            or self._busy
            or self._starter is None
            or self.must_close
        ):
            return False
        assert self._inbox is not None
        first = events[0]
        if type(first) is not RequestReceived or len(self._inbox):
            return False
        head = first.head
        if head.upgrade is not None or not head.keep_alive or head.version != b"1.1":
            return False
        stream = self._stream(head)
        self._busy = self._fast = True  # `start` may resume at once
        if self._starter.start(stream):
            return True
        self._busy = self._fast = False
        return False

    def fast_settled(self) -> None:
        self._fast = self._busy = False
        self._last_active = self._clock.now()
        if self.must_close:
            self.close()
            return
        held = self._held
        if held:
            self._held = []
            if self._transport is not None:
                self._transport.resume_reading()
            assert self._inbox is not None
            if self._start_fast(held):
                return  # an end of input waits for this one too
            self._inbox.put(held)
        if self._eof:
            self._eof = False
            self._take_eof()

    def fast_resumed(self, resume: Resume) -> None:
        self._fast = False  # `_busy` stays: the task finishes the exchange
        held, self._held = self._held, []
        if self._task is None or self._task.done():
            self._server.finish_orphan(resume)  # the client is gone
            return
        if held and self._transport is not None:
            self._transport.resume_reading()
        assert self._inbox is not None
        self._inbox.put([resume, *held])
        if self._eof:
            self._eof = False
            self._take_eof()

    # -- used by Http1Stream -------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def next_event(self) -> Coroutine[None, None, Event | Resume | None]:
        """The next request event (the Inbox's coroutine itself, not a wrapper)."""
        assert self._inbox is not None
        return self._inbox.get()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- the request loop ----------------------------------------------------

    async def _serve(self) -> None:
        assert self._inbox is not None
        inbox = self._inbox
        try:
            while not self.must_close:
                event = inbox.take() or await inbox.get()
                if event is None:
                    break
                work: Awaitable[None]
                if type(event) is RequestReceived:
                    stream = self._stream(event.head)
                    work = self._server.handler(stream)
                elif type(event) is Resume:
                    stream = event.stream
                    work = event.work()
                else:
                    if type(event) is not EndOfRequest:  # a bodiless request's end: nothing to do
                        self._dispatch(event)
                    continue
                # The exchange, inline rather than in a coroutine of its own.
                self._busy = True
                try:
                    await work
                except ConnectionError:
                    self.must_close = True
                except Exception:
                    log.exception("handler failed")
                    self._fail(stream)
                finally:
                    self._busy = False
                    self._last_active = self._clock.now()
                if not stream.response_started or not stream.body_done:
                    self.must_close = True
        except ConnectionError:
            self.must_close = True
        finally:
            self.close()
            # Exchanges the fast path began and left to this task still
            # release their upstream connection and are accounted for.
            while (event := inbox.take()) is not None:
                if type(event) is Resume:
                    self._server.finish_orphan(event)

    def _dispatch(self, event: Event | Resume) -> None:
        """Whatever comes between requests that is not one."""
        if isinstance(event, Rejected):
            self.write(render_rejected(event))
            self.must_close = True
        elif not isinstance(event, Body | EndOfRequest):
            # Upgraded: tunnelling is not served yet; refuse plainly.
            self.must_close = True

    def _stream(self, head: RequestHead) -> Http1Stream:
        peer = self._request_peer
        if peer.host != head.host or peer.version != head.version:
            peer = self._request_peer = _with_request(self._peer, head)
        if head.upgrade is not None:
            # Whatever the answer, the bytes after this request belong to
            # the upgraded protocol (or to nobody): never parse them as HTTP.
            self.must_close = True
        return Http1Stream(self, head, peer)

    def _fail(self, stream: Http1Stream) -> None:
        if stream.response_started:
            stream.abort()
            return
        stream.send_local(render(GatewayError("internal gateway error"), close=True), close=True)

    # -- timeouts ------------------------------------------------------------

    def _arm_timer(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(delay, 0.01)
        self._timer_due = self._clock.now() + delay
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        now = self._clock.now()
        rejected = self._parser.check_timeout(now)
        if rejected is not None and not self._busy:
            self.write(render_rejected(rejected))
            self.close()
            return
        idle_for = now - self._last_active
        keepalive = self._server.limits.keepalive_timeout
        idle = not self._busy and self._parser.state is State.IDLE
        if idle and idle_for >= keepalive:
            self.close()
            return
        deadline = self._parser.header_deadline()
        next_check = keepalive - idle_for if idle else keepalive
        if deadline is not None:
            next_check = min(next_check, deadline - now)
        self._arm_timer(next_check)


async def _quietly(resume: Resume) -> None:
    try:
        await resume.work()  # made in the task: its context is the task's
    except ConnectionError:
        pass  # the client is gone: writing to it fails, as expected here
    except Exception:
        log.exception("handler failed")


def _with_request(peer: Peer, head: RequestHead) -> Peer:
    return Peer(address=peer.address, scheme=peer.scheme, host=head.host, version=head.version)


class ProxyServer:
    """Listens for HTTP/1.1 clients and hands each request to `handler`."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: ServerLimits | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or ServerLimits()
        self.clock = clock or SystemClock()
        self.connections: set[Http1Protocol] = set()
        self._server: asyncio.Server | None = None
        self._orphans: set[asyncio.Task[None]] = set()
        # A handler with a `start` method offers the fast path (FastStarter).
        has_start = callable(getattr(handler, "start", None))
        self.starter: FastStarter | None = cast(FastStarter, handler) if has_start else None

    def connection_opened(self, conn: Http1Protocol) -> None:
        self.connections.add(conn)
        if len(self.connections) > self.limits.max_connections:
            conn.abort()  # slow-client protection: shed the newest connection

    def connection_closed(self, conn: Http1Protocol) -> None:
        self.connections.discard(conn)

    def finish_orphan(self, resume: Resume) -> None:
        """Finish an exchange whose client connection's task has ended: its
        answer goes nowhere, but its upstream connection and accounting must
        not be lost with it."""
        task = asyncio.get_running_loop().create_task(_quietly(resume))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def start(
        self,
        host: str,
        port: int,
        *,
        reuse_port: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> int:
        """Listen on host:port (0 picks a free port); returns the bound port.

        With `tls`, connections are TLS (handshake failures only close that
        connection). Raises OSError when the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Http1Protocol(self),
            host,
            port,
            reuse_port=reuse_port,
            backlog=1024,
            ssl=tls,
        )
        # asyncio and uvloop set TCP_NODELAY on accepted sockets themselves.
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and close every client connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        for task in list(self._orphans):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
