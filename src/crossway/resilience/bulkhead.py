# The bulkhead: a cap on concurrent calls to one dependency, with a bounded
# FIFO queue, so one slow dependency cannot take every thread or task.
#
# Theory of operation
# -------------------
# `BulkheadCore` is pure bookkeeping: `active` calls hold a slot, `waiting`
# callers stand in a FIFO queue of opaque waiter objects.
#
#   try_enter()     take a free slot, unless someone is already queued
#                   (arrivals never overtake the queue);
#   enqueue(w)      join the queue, unless it already holds max_queue;
#   release()       a call ended: hand its slot straight to the first waiter
#                   (returned, so the caller can wake it) or free it;
#   cancel(w)       a waiter gave up: True if it was still queued, False if it
#                   had already been handed a slot (which it must release).
#
# `Bulkhead` drives the core for threads (a waiter is a locked Lock that the
# releaser unlocks) and for asyncio tasks (a waiter is a Future resolved on its
# own loop via call_soon_threadsafe), with one short lock around the core, so
# one bulkhead can be shared by threads and event loops at once.
#
# Invariants
# ----------
# Rule 1: active <= max_concurrent and waiting <= max_queue, always.
# Rule 2: a slot is never lost: a waiter that times out or is cancelled after
#         being handed a slot either keeps it (timeout) or releases it
#         (cancellation), decided under the lock by `cancel`.
# Rule 3: waiters are served in arrival order.

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from crossway.core.errors import CrosswayError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
W = TypeVar("W")


class BulkheadFullError(CrosswayError):
    """Every slot is taken and the queue is full (or the wait timed out)."""

    code = "bulkhead_full"
    status = 503


class BulkheadCore(Generic[W]):
    """Pure slot and queue accounting; not thread-safe on its own."""

    __slots__ = ("_queue", "active", "max_concurrent", "max_queue")

    def __init__(self, max_concurrent: int, max_queue: int = 0) -> None:
        if max_concurrent < 1 or max_queue < 0:
            raise ValueError("max_concurrent must be >= 1 and max_queue >= 0")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.active = 0
        self._queue: deque[W] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def try_enter(self) -> bool:
        if self.active < self.max_concurrent and not self._queue:
            self.active += 1
            return True
        return False

    def enqueue(self, waiter: W) -> bool:
        if len(self._queue) >= self.max_queue:
            return False
        self._queue.append(waiter)
        return True

    def release(self) -> W | None:
        if self._queue:
            return self._queue.popleft()  # the slot passes to it; active unchanged
        if self.active <= 0:
            raise RuntimeError("bulkhead released more often than entered")
        self.active -= 1
        return None

    def cancel(self, waiter: W) -> bool:
        try:
            self._queue.remove(waiter)
        except ValueError:
            return False
        return True


class _ThreadWaiter:
    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def wait(self, timeout: float | None) -> bool:
        return self._lock.acquire(timeout=-1 if timeout is None else timeout)

    def grant(self) -> None:
        self._lock.release()


class _TaskWaiter:
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def grant(self) -> None:
        self.loop.call_soon_threadsafe(self._resolve)


_Waiter = _ThreadWaiter | _TaskWaiter


class Bulkhead:
    """At most `max_concurrent` calls at once; up to `max_queue` more wait
    (at most `max_wait` seconds, None = as long as it takes)."""

    def __init__(
        self,
        name: str = "bulkhead",
        *,
        max_concurrent: int = 25,
        max_queue: int = 0,
        max_wait: float | None = None,
    ) -> None:
        self.name = name
        self.max_wait = max_wait
        self._core: BulkheadCore[_Waiter] = BulkheadCore(max_concurrent, max_queue)
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._core.active

    @property
    def waiting(self) -> int:
        return self._core.waiting

    def _full(self, why: str) -> BulkheadFullError:
        core = self._core
        return BulkheadFullError(
            f"bulkhead {self.name!r} {why}",
            bulkhead=self.name,
            max_concurrent=core.max_concurrent,
            max_queue=core.max_queue,
        )

    def _enter_or_queue(self, make: Callable[[], _Waiter]) -> _Waiter | None:
        with self._lock:
            if self._core.try_enter():
                return None
            waiter = make()
            if not self._core.enqueue(waiter):
                raise self._full("is full")
            return waiter

    def _withdraw(self, waiter: _Waiter) -> bool:
        """True if the waiter left the queue; False if it holds a slot now."""
        with self._lock:
            return self._core.cancel(waiter)

    def release(self) -> None:
        """End a call: the slot goes to the first waiter, if any."""
        while True:
            with self._lock:
                waiter = self._core.release()
            if waiter is None:
                return
            try:
                waiter.grant()
                return
            except RuntimeError:
                continue  # its event loop is closed: pass the slot on

    def acquire(self) -> None:
        """Take a slot, waiting in the queue if there is room.

        Raises BulkheadFullError when the queue is full or `max_wait` passes.
        An exception while waiting (KeyboardInterrupt) leaves no slot taken.
        """
        waiter = self._enter_or_queue(_ThreadWaiter)
        if waiter is None:
            return
        assert isinstance(waiter, _ThreadWaiter)
        try:
            granted = waiter.wait(self.max_wait)
        except BaseException:
            if not self._withdraw(waiter):
                self.release()
            raise
        if not granted and self._withdraw(waiter):
            raise self._full(f"had no free slot within {self.max_wait}s")

    async def acquire_async(self) -> None:
        """Take a slot, awaiting in the queue if there is room.

        Raises BulkheadFullError when the queue is full or `max_wait` passes.
        If the task is cancelled while queued, no slot is kept and
        CancelledError propagates.
        """
        loop = asyncio.get_running_loop()
        waiter = self._enter_or_queue(lambda: _TaskWaiter(loop))
        if waiter is None:
            return
        assert isinstance(waiter, _TaskWaiter)
        try:
            async with asyncio.timeout(self.max_wait):
                await waiter.future
        except TimeoutError as exc:
            if self._withdraw(waiter):
                raise self._full(f"had no free slot within {self.max_wait}s") from exc
        except BaseException:
            if not self._withdraw(waiter):
                self.release()
            raise

    # -- wrappers ------------------------------------------------------------------

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    async def __aenter__(self) -> None:
        await self.acquire_async()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run `fn` holding a slot; BulkheadFullError if none can be had."""
        with self:
            return fn(*args, **kwargs)

    async def call_async(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await `fn` holding a slot; BulkheadFullError if none can be had."""
        async with self:
            return await fn(*args, **kwargs)

    def __call__(self, fn: F) -> F:
        """Decorate a def or async def function."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def bounded_async(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await fn(*args, **kwargs)

            return cast(F, bounded_async)

        @functools.wraps(fn)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return cast(F, bounded)
