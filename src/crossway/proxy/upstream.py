# Upstream connections and per-endpoint keep-alive pools.
#
# Theory of operation
# -------------------
# `UpstreamConnection` is an asyncio Protocol carrying one exchange at a time:
# the engine writes a request, then pulls `ResponseEvent`s from its Inbox
# (which pauses the socket when the client side is slower, see flow.py).
#
# `EndpointPool` keeps the idle connections to one address, newest first
# (LIFO keeps a small hot set and lets the rest age out), and enforces
# Envoy-style circuit-breaking limits: at most `max_connections` open
# connections and `max_pending` callers waiting for one; beyond that the
# caller is refused at once with `Overloaded` (503, reason `max_pending`)
# rather than queued without bound. `UpstreamPool` maps addresses to
# EndpointPools.
#
# Invariants
# ----------
# - A connection returns to the idle list only if its last response was
#   complete and keep-alive (`ResponseParser.reusable`) and the socket is
#   open; anything else is closed, so no response bytes leak between
#   exchanges.
# - `active` counts connections open or being opened; a slot freed by a
#   closing connection goes to the oldest waiter first.
# - Idle connections older than `idle_timeout` are closed when met, never
#   handed out.
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import cast

from crossway.core.clock import Clock, SystemClock
from crossway.proxy.errors import Overloaded, UpstreamConnectFailed
from crossway.proxy.flow import Inbox, WriteGate
from crossway.proxy.http1_wire import ResponseEvent, ResponseParser

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Per-endpoint connection limits (Envoy's circuit-breaker thresholds)."""

    max_connections: int = 1024
    max_pending: int = 1024
    max_idle: int = 256
    idle_timeout: float = 60.0
    connect_timeout: float = 2.0


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection to an upstream endpoint."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.parser = ResponseParser()
        self.gate = WriteGate()
        self.closed = False
        self.exchanges = 0
        self.idle_since = 0.0
        self.timed_out = False
        # Called after the timer closed the connection: an exchange waiting on
        # its other side too (a client that stopped reading) is woken by it.
        self.on_timeout: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's
        self._timer_at = 0.0  # when `_timer` fires (loop time)
        self._due: float | None = None  # the armed deadline (loop time)
        self._transport: asyncio.Transport | None = None
        self._inbox: Inbox[ResponseEvent] | None = None
        # Set for an exchange begun outside a coroutine (the gateway's fast
        # path): it is handed each read's events first and returns True when
        # it took them, False to leave them (and the rest) to the Inbox.
        self.relay: Callable[[list[ResponseEvent]], bool] | None = None

    # -- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._inbox = Inbox(self._transport)

    def data_received(self, data: bytes) -> None:
        assert self._inbox is not None
        events = self.parser.receive(data)
        relay = self.relay
        if relay is not None and relay(events):
            return
        self._inbox.put(events)

    def eof_received(self) -> bool:
        return False  # close our side too: HTTP/1.1 has no half-close use

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gate.lose()
        if self._inbox is not None:
            events = self.parser.receive(b"")
            relay = self.relay
            if relay is None or not relay(events):
                self._inbox.put(events)
            self._inbox.close()

    def pause_writing(self) -> None:
        self.gate.pause()

    def resume_writing(self) -> None:
        self.gate.resume()

    # -- exchange API --------------------------------------------------------

    def begin(self, method: bytes) -> None:
        """Start an exchange; the next response answers `method`."""
        self.exchanges += 1
        self.parser.expect(method)

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(data)

    async def drain(self) -> None:
        """Wait for the socket buffer; raises ConnectionResetError if lost."""
        await self.gate.drain()

    def take_event(self) -> ResponseEvent | None:
        """The next response event if one is already here, else None."""
        assert self._inbox is not None
        return self._inbox.take()

    def next_event(self) -> Coroutine[None, None, ResponseEvent | None]:
        """The next response event, or None when the connection is gone
        (the Inbox's coroutine itself: one coroutine per wait, not two)."""
        assert self._inbox is not None
        return self._inbox.get()

    @property
    def buffered(self) -> bool:
        """Whether response events are already waiting to be taken."""
        return self._inbox is not None and len(self._inbox) > 0

    @property
    def reusable(self) -> bool:
        return not self.closed and self.parser.reusable

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.abort()

    def arm_timeout(self, delay: float) -> None:
        """Close the connection, setting `timed_out`, unless disarmed within `delay`."""
        # Lazily: a timer already due to fire no later than the new deadline
        # stays, and on firing re-arms for what is left. Consecutive
        # exchanges on a keep-alive connection then arm a timer once per
        # `delay` instead of creating and cancelling one per request.
        loop = self._loop
        if loop is None:
            # Kept: on Python 3.11 every get_running_loop() is a getpid()
            # system call, and this runs once per request.
            loop = self._loop = asyncio.get_running_loop()
        due = loop.time() + delay
        self._due = due
        timer = self._timer
        if timer is not None:
            if self._timer_at <= due:
                return
            timer.cancel()
        self._timer_at = due
        self._timer = loop.call_at(due, self._on_timer)

    def disarm_timeout(self) -> None:
        self._due = None  # a pending timer finds nothing to do

    def _on_timer(self) -> None:
        self._timer = None
        due = self._due
        if due is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < due:
            self._timer_at = due
            self._timer = loop.call_at(due, self._on_timer)
            return
        self._due = None
        self.timed_out = True
        self.close()
        if self.on_timeout is not None:
            self.on_timeout()


class EndpointPool:
    """Keep-alive connections to one address, with connection limits."""

    def __init__(self, address: Address, *, limits: PoolLimits, clock: Clock) -> None:
        self.address = address
        self._limits = limits
        self._clock = clock
        self._idle: list[UpstreamConnection] = []
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.active = 0
        self.acquired = 0  # exchanges started, for /stats

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def pending(self) -> int:
        return len(self._waiters)

    def limit_connections(self, most: int) -> None:
        """Cap open connections at `most` (a service's call policy); callers
        beyond it wait for one. Lowering the cap closes nothing: it holds as
        connections are released."""
        if most != self._limits.max_connections:
            self._limits = replace(self._limits, max_connections=most)

    def take_idle(self) -> UpstreamConnection | None:
        """An idle connection for one exchange, if there is one at hand
        (`acquire` without its coroutine, for the common case)."""
        if not self._idle:
            return None
        conn = self._take_idle()
        if conn is not None:
            self.acquired += 1
        return conn

    async def acquire(self) -> UpstreamConnection:
        """A connection ready for one exchange.

        Raises `Overloaded` (reason `max_pending`) when too many callers
        wait, `UpstreamConnectFailed` when connecting fails or times out.
        Cancellation while waiting or connecting frees the slot.
        """
        self.acquired += 1
        conn = self._take_idle()
        if conn is not None:
            return conn
        if self.active >= self._limits.max_connections:
            await self._wait_for_slot()
        self.active += 1
        try:
            return await self._connect()
        except BaseException:
            self._free_slot()
            raise

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection after an exchange; closes it unless reusable."""
        if conn.reusable and len(self._idle) < self._limits.max_idle and not self._waiters:
            conn.idle_since = self._clock.now()
            self._idle.append(conn)
            return
        conn.close()  # a waiter, if any, gets the freed slot and connects afresh
        self._free_slot()

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self.active -= len(self._idle)
        self._idle.clear()

    def _take_idle(self) -> UpstreamConnection | None:
        horizon = self._clock.now() - self._limits.idle_timeout
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.idle_since >= horizon:
                return conn
            conn.close()
            self._free_slot()
        return None

    async def _wait_for_slot(self) -> None:
        if len(self._waiters) >= self._limits.max_pending:
            raise Overloaded("too many requests waiting for a connection", reason="max_pending")
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._free_slot()  # the slot was handed to us; pass it on
            raise
        self.active -= 1  # the slot was reserved for us by _free_slot

    def _free_slot(self) -> None:
        if self._waiters:
            # Hand the slot straight to the oldest waiter (count stays).
            self._waiters.popleft().set_result(None)
            return
        self.active -= 1

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        host, port = self.address
        try:
            async with asyncio.timeout(self._limits.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self.address), host, port
                )
        except TimeoutError:
            raise UpstreamConnectFailed(
                f"connect to {host}:{port} timed out", reason="connect_timeout"
            ) from None
        except OSError as error:
            raise UpstreamConnectFailed(
                f"connect to {host}:{port} failed: {error.strerror or error}",
                reason="connect_failure",
            ) from None
        return conn


class UpstreamPool:
    """EndpointPools by address; one per gateway process."""

    def __init__(self, *, limits: PoolLimits | None = None, clock: Clock | None = None) -> None:
        self.limits = limits or PoolLimits()
        self._clock = clock or SystemClock()
        self._pools: dict[Address, EndpointPool] = {}

    def endpoint(self, address: Address) -> EndpointPool:
        pool = self._pools.get(address)
        if pool is None:
            pool = EndpointPool(address, limits=self.limits, clock=self._clock)
            self._pools[address] = pool
        return pool

    def take_idle(self, address: Address) -> UpstreamConnection | None:
        """An idle keep-alive connection to `address`, if one is at hand."""
        pool = self._pools.get(address)
        return pool.take_idle() if pool is not None else None

    async def acquire(self, address: Address) -> UpstreamConnection:
        pool = self._pools.get(address)
        return await (pool or self.endpoint(address)).acquire()

    def release(self, conn: UpstreamConnection) -> None:
        pool = self._pools.get(conn.address)
        (pool or self.endpoint(conn.address)).release(conn)

    def pools(self) -> list[EndpointPool]:
        return list(self._pools.values())

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
