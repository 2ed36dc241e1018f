# Flow control between asyncio transports and the coroutines that relay them.
#
# Theory of operation
# -------------------
# The engine relays bytes from one transport to another. Memory stays bounded
# because nothing is read faster than it is written:
#
# - `Inbox` sits behind a protocol's `data_received`: parsed events queue
#   here for the one coroutine that consumes them, and once more than
#   `high` body bytes wait, the transport stops reading (`pause_reading`)
#   until the consumer has taken the queue below `low`. TCP's window then
#   pushes back on the sender.
# - `WriteGate` mirrors the transport's own write buffer: asyncio calls
#   `pause_writing` above its high-water mark, and a writer awaits `drain()`
#   before writing more.
#
# Invariants
# ----------
# - At most `high` + one read's worth of body bytes wait in an Inbox.
# - A closed Inbox returns what it holds, then `None` for ever; a WriteGate
#   whose transport is gone raises `ConnectionResetError` from `drain()`, so
#   a relay never waits on a dead peer.
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from crossway.proxy.http1 import Body

T = TypeVar("T")

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Readable(Protocol):
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Inbox(Generic[T]):
    """A single-consumer event queue that pauses its transport when full."""

    __slots__ = ("_bytes", "_closed", "_events", "_paused", "_transport", "_waiter")

    def __init__(self, transport: Readable) -> None:
        self._transport = transport
        self._events: deque[T] = deque()
        self._bytes = 0
        self._paused = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    def put(self, events: Sequence[T]) -> None:
        for event in events:
            if isinstance(event, Body):
                self._bytes += len(event.data)
        self._events.extend(events)
        if self._bytes > HIGH_WATER and not self._paused:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def __len__(self) -> int:
        return len(self._events)

    def take(self) -> T | None:
        """The next event if one is queued, else None (without waiting):
        saves the coroutine of `get` when the next event is already here."""
        if not self._events:
            return None
        event = self._events.popleft()
        if isinstance(event, Body):
            self._bytes -= len(event.data)
            if self._paused and self._bytes <= LOW_WATER:
                self._paused = False
                self._transport.resume_reading()
        return event

    async def get(self) -> T | None:
        """The next event, or None once closed and empty. Cancellation-safe."""
        events = self._events
        while not events:
            if self._closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = events.popleft()
        if isinstance(event, Body):
            self._bytes -= len(event.data)
            if self._paused and self._bytes <= LOW_WATER:
                self._paused = False
                self._transport.resume_reading()
        return event

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class WriteGate:
    """Mirrors a transport's pause_writing/resume_writing for writers to await."""

    __slots__ = ("_lost", "_paused", "_waiter")

    def __init__(self) -> None:
        self._paused = False
        self._lost = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def blocked(self) -> bool:
        """Whether `drain()` would wait or raise (writers skip the await otherwise)."""
        return self._paused or self._lost

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake()

    def lose(self) -> None:
        self._lost = True
        self._wake()

    async def drain(self) -> None:
        """Wait until the transport can take more; raises if it is gone."""
        while self._paused and not self._lost:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._lost:
            raise ConnectionResetError("peer connection lost")

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
