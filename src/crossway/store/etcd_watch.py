"""Watches for the etcd backend: one etcd watch stream per `EtcdWatch`,
resumed across broken connections without losing or repeating an event.

Theory of operation
- `WatchCursor` (pure) holds `after`: every event with a revision <= `after`
  has been received into the watch's buffer, and none after it. A (re)connect
  asks etcd for events from `after + 1`. `after` is None only until etcd has
  registered a watch that started "now"; etcd's `created` response then fixes
  it at the revision the watch was registered at.
- `after` moves forward only on events taken into the buffer, and on etcd's
  progress notifications (empty responses, which etcd sends only to a watcher
  that has been sent everything up to their revision). It never moves on the
  header of an events response: for a watcher catching up, etcd stamps those
  with the newest revision while more events are still to come.
- etcd sends every event of one revision in one response (we never ask for
  fragments), and the cursor takes a response whole, so a resume never splits
  a transaction.
- The pump task owns the stream. When the stream breaks (etcd restarted, a
  network blip, a deadline) it reconnects after a `Backoff` delay and resumes
  from `after + 1`; if etcd says that revision has been compacted meanwhile,
  the watch ends with `CompactedError` once the consumer has read everything
  received before it. Errors that a retry cannot fix end the watch the same way.
- The buffer is bounded: when the consumer falls `buffer_limit` events behind,
  the pump stops reading, gRPC flow control pushes back, and etcd parks the
  watcher among its unsynced ones until we read again. Memory stays bounded and
  nothing is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from aetcd import rpc

from crossway.core.errors import CrosswayError, InvalidArgument
from crossway.store.errors import CompactedError, StoreUnavailable
from crossway.store.etcd_codec import event, translate_rpc_error, watch_create_request
from crossway.store.types import Event

log = logging.getLogger("crossway.store.etcd")

DEFAULT_WATCH_BUFFER = 10_000


class WatchCursor:
    """Where a watch stands in etcd's history; see the module header."""

    __slots__ = ("after",)

    def __init__(self, after: int | None) -> None:
        self.after = after

    def start_revision(self) -> int:
        """What to ask etcd for: the next revision, or 0 for "from now"."""
        return 0 if self.after is None else self.after + 1

    def created(self, revision: int) -> None:
        if self.after is None:
            self.after = revision

    def progress(self, revision: int) -> None:
        if self.after is not None and revision > self.after:
            self.after = revision

    def accept(self, events: list[Event]) -> list[Event]:
        """The events not received before, in order; advances the cursor past them."""
        if self.after is not None:
            after = self.after
            events = [e for e in events if e.kv.mod_revision > after]
        if events:
            self.after = events[-1].kv.mod_revision
        return events


class Backoff:
    """Exponential reconnect delays with jitter, capped; pure."""

    __slots__ = ("_current", "factor", "initial", "maximum")

    def __init__(self, *, initial: float = 0.05, maximum: float = 2.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self._current = initial

    def next_delay(self, jitter: float) -> float:
        """The delay before the next attempt; `jitter` in [0, 1) spreads clients apart."""
        delay = self._current * (0.5 + jitter / 2)
        self._current = min(self.maximum, self._current * self.factor)
        return delay

    def reset(self) -> None:
        self._current = self.initial


class _Resume(Exception):
    """The stream ended in a way a reconnect fixes."""


StreamOpener = Callable[[bool], tuple[Any, str]]
"""Opens a new etcd Watch call (on another endpoint when told the last attempt
failed); returns it and the endpoint's address. Raises StoreClosed when closed."""


class EtcdWatch:
    """An open watch on the etcd backend. Iterate it for events; `aclose()` when done.

    Cancelling a consumer waiting in `__anext__`/`next_batch` leaves the watch
    intact. Errors: `CompactedError` when the history it needs is gone,
    `StoreClosed` once the store is closed, other `CrosswayError`s when etcd
    refuses the watch; each only after every event received before it.
    """

    def __init__(
        self,
        opener: StreamOpener,
        prefix: str,
        after_revision: int | None,
        *,
        buffer_limit: int = DEFAULT_WATCH_BUFFER,
        on_close: Callable[[EtcdWatch], None] | None = None,
    ) -> None:
        self.prefix = prefix
        self._opener = opener
        self._cursor = WatchCursor(after_revision)
        self._backoff = Backoff()
        self._limit = buffer_limit
        self._on_close = on_close
        self._buffer: deque[Event] = deque()
        self._error: BaseException | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._drained = asyncio.Event()
        self._lost = False
        self._task = asyncio.get_running_loop().create_task(self._pump())

    # The consumer side.

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if not self._buffer:
            await self._fill()
        event = self._buffer.popleft()
        self._drained.set()
        return event

    async def next_batch(self) -> list[Event]:
        if not self._buffer:
            await self._fill()
        batch = list(self._buffer)
        self._buffer.clear()
        self._drained.set()
        return batch

    async def _fill(self) -> None:
        while not self._buffer:
            if self._error is not None:
                raise self._error
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    async def aclose(self) -> None:
        """Stop following etcd; safe to call twice. Later reads raise StopAsyncIteration."""
        await self.shutdown(StopAsyncIteration())

    async def shutdown(self, error: BaseException) -> None:
        """End the watch with `error` (what the store's `close()` uses)."""
        self._fail(error)
        self._task.cancel()
        # wait() neither raises the pump's cancellation nor swallows ours.
        await asyncio.wait([self._task])
        if self._on_close is not None:
            self._on_close(self)
            self._on_close = None

    async def __aenter__(self) -> EtcdWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._wakeup
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The pump: owns the etcd stream.

    async def _pump(self) -> None:
        while self._error is None:
            try:
                await self._follow()
            except _Resume as exc:
                if not self._lost:
                    log.warning("watch on %r lost its etcd stream (%s); resuming", self.prefix, exc)
                self._lost = True
            except CrosswayError as exc:
                self._fail(exc)
                return
            except Exception as exc:  # a fault of ours or grpc's: end the watch, loudly
                log.exception("watch on %r failed", self.prefix)
                self._fail(StoreUnavailable(f"the watch on {self.prefix!r} failed: {exc!r}"))
                return
            await asyncio.sleep(self._backoff.next_delay(random.random()))

    async def _follow(self) -> None:
        call, where = self._opener(self._lost)
        try:
            await call.write(watch_create_request(self.prefix, self._cursor.start_revision()))
            while True:
                response = await call.read()
                if not isinstance(response, rpc.WatchResponse):
                    raise _Resume("etcd closed the stream")
                await self._handle(response)
        except rpc.AioRpcError as exc:
            error = translate_rpc_error(exc.code().name, exc.details() or "", where=where)
            if isinstance(error, StoreUnavailable):
                raise _Resume(error.message) from None
            raise error from None
        finally:
            call.cancel()

    async def _handle(self, response: Any) -> None:
        if response.compact_revision:
            requested = self._cursor.start_revision() - 1
            raise CompactedError(requested, response.compact_revision)
        if response.canceled:
            reason = response.cancel_reason or "no reason given"
            if response.created:  # refused outright: asking again will not help
                raise InvalidArgument(f"etcd refused the watch on {self.prefix!r}: {reason}")
            raise _Resume(f"etcd cancelled the watch: {reason}")
        if response.created:
            self._cursor.created(response.header.revision)
            self._backoff.reset()
            if self._lost:
                log.info("watch on %r resumed after revision %s", self.prefix, self._cursor.after)
                self._lost = False
            return
        if not response.events:
            self._cursor.progress(response.header.revision)
            return
        await self._room()
        # No await from here on: the cursor and the buffer move together.
        fresh = self._cursor.accept([event(raw) for raw in response.events])
        if fresh:
            self._buffer.extend(fresh)
            self._wake()

    async def _room(self) -> None:
        while len(self._buffer) >= self._limit:
            self._drained.clear()
            await self._drained.wait()
