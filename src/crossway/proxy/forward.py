# Forwarding one request to one upstream endpoint and relaying the answer.
#
# Theory of operation
# -------------------
# `forward(stream, address, ...)` is protocol-agnostic: it works on a
# `Stream` (stream.py) on the client side and an `UpstreamConnection` on the
# other. It writes the request head with re-derived framing and rewritten
# headers, streams the request body in a separate task (so an upstream that
# answers before reading the whole body — a 413, say — is heard at once),
# then relays response events as they come, awaiting the client's drain
# between pieces. Memory stays bounded on both paths (see flow.py).
#
# Upgrades (WebSocket): with `upgrade`, Connection/Upgrade travel upstream;
# on a 101 the client gets the 101 and bytes are spliced both ways, each
# direction awaiting the other side's drain, until either side closes.
#
# Timeouts: `timeout` bounds the wait for the response head and starts when
# the request body has been sent in full, so a long upload is not cut off by
# a short route timeout (nginx's proxy_read_timeout works the same way).
# `idle_timeout` bounds every other wait (Envoy's stream idle timeout, nginx's
# proxy_send_timeout and send_timeout): while the body goes up, while the
# response body comes down and through a tunnel, the exchange ends when no
# byte has moved either way for that long — a 504 (reason `idle_timeout`)
# while the client has seen nothing, an abort after. Both use the upstream
# connection's one lazily re-armed timer: each move only pushes its deadline
# (`arm_timeout`, no timer made or cancelled), and a whole answer read at
# once never waits, so it costs no timer of its own.
#
# Invariants
# ----------
# - Before the response head reaches the client, every failure becomes a
#   `GatewayError` raised to the caller (which answers 502/503/504 or retries).
#   After it, a failure aborts the client connection: a half-sent response
#   must not look complete. An idle timeout then also aborts the client
#   (`UpstreamConnection.on_timeout`): a relay may be waiting on a client
#   that stopped reading, which closing the upstream alone would not wake.
# - A connection returns to the pool only if both the request and the
#   response were complete; otherwise it is closed.
# - A request without a body that fails on a reused keep-alive connection
#   before any response byte is sent again once on a fresh connection: the
#   upstream closed an idle connection as we wrote to it (a benign race).
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import NamedTuple

from crossway.proxy.errors import (
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)
from crossway.proxy.headers import ForwardingPolicy, Headers, forward_request, forward_response
from crossway.proxy.http1 import Body, Rejected, RequestHead
from crossway.proxy.http1_wire import (
    LAST_CHUNK,
    EndOfResponse,
    Framing,
    ResponseEvent,
    ResponseHead,
    ResponseReceived,
    encode_chunk,
    encode_head,
    request_line,
)
from crossway.proxy.stream import ClientBodyError, Stream
from crossway.proxy.upstream import Address, UpstreamConnection, UpstreamPool

_NOT_FORWARDED = frozenset({b"expect"})

DEFAULT_IDLE_TIMEOUT = 300.0
"""Seconds without a byte moving either way before an exchange ends, for
routes that set no `idle_timeout` (long enough for slow streams and quiet
WebSockets, short enough that dead peers do not hold connections for ever)."""


class _Stale(Exception):
    """A reused connection died before answering; safe to try a fresh one."""


class RetriableStatus(Exception):
    """The upstream answered a status the caller asked to retry; nothing was sent."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status


class _Plan(NamedTuple):
    """Everything an attempt needs besides the stream and the connection
    (a NamedTuple: built per request, at a third of a frozen dataclass's cost)."""

    wire_head: bytes
    timeout: float
    policy: ForwardingPolicy
    edit_response: Callable[[Headers], Headers] | None
    max_body: int | None
    retry_statuses: frozenset[int]
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT


_NO_STATUSES: frozenset[int] = frozenset()


def _plan(
    wire_head: bytes,
    timeout: float,
    policy: ForwardingPolicy,
    edit_response: Callable[[Headers], Headers] | None,
    max_body: int | None,
    retry_statuses: frozenset[int],
    idle_timeout: float,
) -> _Plan:
    # tuple.__new__: a NamedTuple's generated __new__ costs ~200 ns, per request.
    fields = (wire_head, timeout, policy, edit_response, max_body, retry_statuses, idle_timeout)
    return tuple.__new__(_Plan, fields)


async def forward(
    stream: Stream,
    address: Address,
    *,
    pool: UpstreamPool,
    policy: ForwardingPolicy,
    timeout: float,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    target: bytes | None = None,
    extra_headers: Headers | None = None,
    drop_headers: frozenset[bytes] = frozenset(),
    edit_response: Callable[[Headers], Headers] | None = None,
    max_body: int | None = None,
    upgrade: bool = False,
    retry_statuses: frozenset[int] = frozenset(),
) -> int:
    """Send `stream`'s request to `address`; returns the upstream status.

    Raises `GatewayError` (502 connect/reset/protocol, 503 overloaded, 504
    timeout; reason `idle_timeout` when no byte of the request body moved for
    `idle_timeout`) if no response head reached the client; after that,
    failures and silences of `idle_timeout` abort the client connection and
    are not raised. `ClientBodyError` from the client's body propagates (a
    body over `max_body` is one, status 413).
    `edit_response` rewrites the response headers. A response whose status is
    in `retry_statuses` is read and dropped and `RetriableStatus` raised
    instead, the client having seen nothing. Cancellation closes the
    upstream connection.
    """
    if upgrade:
        drop_headers = drop_headers | {b"upgrade"}
        upgrade_to = stream.head.upgrade or b""
        extra_headers = [*(extra_headers or []), (b"connection", b"upgrade")]
        extra_headers.append((b"upgrade", upgrade_to))
    wire_head = _request_head(stream, policy, target, extra_headers, drop_headers, address)
    plan = _plan(wire_head, timeout, policy, edit_response, max_body, retry_statuses, idle_timeout)
    conn = pool.take_idle(address)
    if conn is not None:  # the common case, without `_attempt`'s coroutine
        try:
            return await _exchange(stream, conn, plan)
        except _Stale:
            pass
        finally:
            pool.release(conn)
        return await _attempt(stream, address, pool, plan, fresh=True)
    try:
        return await _attempt(stream, address, pool, plan, fresh=False)
    except _Stale:
        return await _attempt(stream, address, pool, plan, fresh=True)


def _request_head(
    stream: Stream,
    policy: ForwardingPolicy,
    target: bytes | None,
    extra: Headers | None,
    drop: frozenset[bytes],
    address: Address,
) -> bytes:
    head = stream.head
    drop = drop | _NOT_FORWARDED if drop else _NOT_FORWARDED
    headers = [(n, v) for n, v in head.headers if n not in drop]
    headers = forward_request(headers, stream.peer, policy)
    if extra:
        headers.extend(extra)
    if head.host is None and not any(name == b"host" for name, _ in headers):
        # An HTTP/1.0 client may send no Host; the request goes upstream as
        # HTTP/1.1, which requires one (RFC 9112 section 3.2): name the upstream.
        headers.append((b"host", _authority(address)))
    framing, length = _request_framing(head)
    return encode_head(request_line(head.method, target or head.target), headers, framing, length)


def _authority(address: Address) -> bytes:
    host, port = address[0], address[1]
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode("ascii")


def _request_framing(head: RequestHead) -> tuple[Framing, int | None]:
    if head.chunked:
        return Framing.CHUNKED, None
    if head.content_length is not None:
        return Framing.LENGTH, head.content_length
    return Framing.NONE, None


async def _attempt(
    stream: Stream,
    address: Address,
    pool: UpstreamPool,
    plan: _Plan,
    *,
    fresh: bool,
) -> int:
    conn = pool.take_idle(address) or await pool.acquire(address)
    while fresh and conn.exchanges:
        # Idle connections older than the one that just failed are suspect
        # too (the upstream likely restarted); drop them and connect anew.
        conn.close()
        pool.release(conn)
        conn = await pool.acquire(address)
    try:
        return await _exchange(stream, conn, plan)
    finally:
        pool.release(conn)


def begin_bodiless(
    stream: Stream,
    conn: UpstreamConnection,
    *,
    policy: ForwardingPolicy,
    timeout: float,
    idle_timeout: float,
    target: bytes,
    extra_headers: Headers,
    drop_headers: frozenset[bytes],
    max_body: int | None,
) -> _Plan:
    """Write a bodiless request's head on `conn`, for an answer taken by
    callback (the gateway's fast path, fastpath.py); the wait for it is
    armed. Returns the plan `finish_bodiless` takes if the answer is not
    taken whole."""
    wire = _request_head(stream, policy, target, extra_headers, drop_headers, conn.address)
    plan = _plan(wire, timeout, policy, None, max_body, _NO_STATUSES, idle_timeout)
    conn.begin(stream.head.method)
    conn.write(wire)
    conn.arm_timeout(timeout)
    return plan


async def finish_bodiless(
    stream: Stream, conn: UpstreamConnection, pool: UpstreamPool, plan: _Plan, *, reused: bool
) -> int:
    """What `forward` does after `begin_bodiless`: await the answer (the
    wait armed then keeps running), relay it, release the connection, and
    send the request once more on a fresh connection if a reused one died."""
    try:
        return await _answer(stream, conn, plan, None, reused=reused, armed=True)
    except _Stale:
        pass
    finally:
        pool.release(conn)
    return await _attempt(stream, conn.address, pool, plan, fresh=True)


async def _exchange(stream: Stream, conn: UpstreamConnection, plan: _Plan) -> int:
    head = stream.head
    reused = conn.exchanges > 0
    conn.begin(head.method)
    conn.write(plan.wire_head)
    pump = None
    if head.has_body:
        pump = asyncio.get_running_loop().create_task(_pump_body(stream, conn, plan))
    return await _answer(stream, conn, plan, pump, reused=reused, armed=False)


async def _answer(
    stream: Stream,
    conn: UpstreamConnection,
    plan: _Plan,
    pump: asyncio.Task[None] | None,
    *,
    reused: bool,
    armed: bool,
) -> int:
    """The exchange once the request head is written: the answer awaited
    (`armed`: its wait already started) and relayed, or tunnelled."""
    try:
        if pump is None:  # `_await_head` inline, the common case
            if not armed:
                conn.arm_timeout(plan.timeout)
            try:
                event = await conn.next_event()
            finally:
                conn.disarm_timeout()
            response = _response_head(conn, event, None, plan.timeout, retry_ok=reused)
        else:
            response = await _await_head(conn, pump, plan)
        if conn.parser.tunnel:
            await _tunnel(stream, conn, response, plan)
            return response.status
        if response.status in plan.retry_statuses:
            await _discard(conn, response, plan.idle_timeout)
            raise RetriableStatus(response.status)
        await _relay(stream, conn, response, plan)
        if pump is not None and not pump.done():
            conn.close()  # upstream answered without reading everything
        return response.status
    except BaseException:
        conn.close()
        raise
    finally:
        if pump is not None and not pump.done():
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump


async def _discard(conn: UpstreamConnection, head: ResponseHead, idle_timeout: float) -> None:
    # Reading the rest keeps the connection reusable for the next attempt.
    if head.framing is Framing.NONE:
        return
    conn.arm_timeout(idle_timeout)
    while isinstance(await conn.next_event(), Body):
        conn.arm_timeout(idle_timeout)
    conn.disarm_timeout()


async def _pump_body(stream: Stream, conn: UpstreamConnection, plan: _Plan) -> None:
    chunked = stream.head.chunked
    limit = plan.max_body
    idle = plan.idle_timeout
    sent = 0
    while (data := await stream.read()) is not None:
        conn.arm_timeout(idle)  # bytes came from the client
        sent += len(data)
        if limit is not None and sent > limit:
            raise ClientBodyError(Rejected(413, "payload_too_large", "request body too large"))
        conn.write(encode_chunk(data) if chunked else data)
        if conn.gate.blocked:
            await conn.drain()
            conn.arm_timeout(idle)  # the upstream took bytes
    if chunked:
        conn.write(LAST_CHUNK)


async def _await_head(
    conn: UpstreamConnection, pump: asyncio.Task[None], plan: _Plan
) -> ResponseHead:
    # One timer on the connection (no asyncio.timeout scope, whose
    # cancellation machinery cost more than the rest of the wait): when it
    # fires it closes the connection, which wakes the read below. While the
    # body goes up it is the idle timer (the pump pushes it on with every
    # piece); once the body is sent it becomes the head's (`_HeadClock`).
    clock = _HeadClock(conn, plan.timeout)
    conn.arm_timeout(plan.idle_timeout)
    pump.add_done_callback(clock)
    try:
        event = await conn.next_event()
    finally:
        conn.disarm_timeout()
        pump.remove_done_callback(clock)
    if conn.timed_out and not clock.started:
        idle = plan.idle_timeout
        if conn.gate.paused:  # the upstream stopped taking the body
            raise UpstreamTimeout(f"no byte moved for {idle:g}s", reason="idle_timeout")
        # The client stopped sending it: its fault, not the upstream's (no
        # outlier ejection for it), answered as a server does, 408.
        detail = f"no byte of the request body for {idle:g}s"
        raise ClientBodyError(Rejected(408, "request_timeout", detail))
    return _response_head(conn, event, pump, plan.timeout, retry_ok=False)


def _response_head(
    conn: UpstreamConnection,
    event: ResponseEvent | None,
    pump: asyncio.Task[None] | None,
    timeout: float,
    *,
    retry_ok: bool,
) -> ResponseHead:
    """The response head `event` should be, or the error the wait came to."""
    if conn.timed_out:
        raise UpstreamTimeout(f"no response within {timeout:g}s", reason="timeout")
    if pump is not None and pump.done() and pump.exception() is not None:
        _raise_body_error(pump)
    if isinstance(event, ResponseReceived):
        return event.head
    if retry_ok and (event is None or not isinstance(event, Body | EndOfResponse)):
        raise _Stale
    if event is None or conn.closed:
        raise UpstreamReset("upstream closed the connection before answering", reason="reset")
    raise UpstreamProtocolError("upstream sent an invalid response", reason="protocol_error")


class _HeadClock:
    """The body pump's done callback: body fully sent, the response head's
    clock starts (`started`). A failed body closes the upstream so the read
    waiting for the head wakes up."""

    __slots__ = ("conn", "started", "timeout")

    def __init__(self, conn: UpstreamConnection, timeout: float) -> None:
        self.conn = conn
        self.timeout = timeout
        self.started = False

    def __call__(self, pump: asyncio.Task[None]) -> None:
        conn = self.conn
        if not pump.cancelled() and pump.exception() is not None:
            conn.close()
        elif not conn.closed:  # not when the idle timer closed it meanwhile
            self.started = True
            conn.arm_timeout(self.timeout)


def _raise_body_error(pump: asyncio.Task[None]) -> None:
    error = pump.exception()
    if isinstance(error, ClientBodyError):
        raise error
    if isinstance(error, ConnectionError | OSError):
        raise UpstreamReset("upstream stopped reading the request", reason="reset")
    if error is not None:
        raise error


async def _tunnel(
    stream: Stream, conn: UpstreamConnection, head: ResponseHead, plan: _Plan
) -> None:
    """Answer 101 and splice bytes both ways until either side closes."""
    headers = forward_response(head.headers, b"1.1", plan.policy)
    upgrade = [(n, v) for n, v in head.headers if n == b"upgrade"]
    stream.start_tunnel([*headers, (b"connection", b"upgrade"), *upgrade])
    idle = plan.idle_timeout
    conn.on_timeout = stream.abort
    conn.arm_timeout(idle)
    upstream_bound = asyncio.get_running_loop().create_task(_client_to_upstream(stream, conn, idle))
    try:
        while (event := await conn.next_event()) is not None and isinstance(event, Body):
            conn.arm_timeout(idle)
            await stream.tunnel_write(event.data)
            conn.arm_timeout(idle)
    finally:
        upstream_bound.cancel()
        with contextlib.suppress(BaseException):
            await upstream_bound
        conn.on_timeout = None
        conn.close()  # the client connection closes after the handler (must_close)


async def _client_to_upstream(stream: Stream, conn: UpstreamConnection, idle: float) -> None:
    while (data := await stream.tunnel_read()) is not None:
        conn.arm_timeout(idle)
        conn.write(data)
        if conn.gate.blocked:
            await conn.drain()
            conn.arm_timeout(idle)
    conn.close()


async def _relay(stream: Stream, conn: UpstreamConnection, head: ResponseHead, plan: _Plan) -> None:
    framing = head.framing
    length = head.content_length if framing is not Framing.CHUNKED else None
    headers = forward_response(head.headers, b"1.1", plan.policy)
    if plan.edit_response is not None:
        headers = plan.edit_response(headers)
    no_body = framing is Framing.NONE
    # When the body is already here, head and body leave in one write.
    defer = conn.buffered
    stream.start_response(head.status, headers, length=length, no_body=no_body, defer=defer)
    if no_body:
        stream.finish()
        return
    idle = plan.idle_timeout
    # The timer's deadline moves on before every wait, on either side (a
    # write waits while the client is slow); when it fires, the client is
    # aborted too, which wakes a write waiting on it.
    conn.on_timeout = stream.abort
    try:
        while True:
            event = conn.take_event()
            if event is None:
                conn.arm_timeout(idle)
                event = await conn.next_event()
            if isinstance(event, Body):
                conn.arm_timeout(idle)
                await stream.write(event.data)
            elif isinstance(event, EndOfResponse):
                stream.finish()
                return
            else:
                stream.abort()  # a truncated (or silent) response must not look complete
                return
    finally:
        conn.on_timeout = None
        conn.disarm_timeout()
