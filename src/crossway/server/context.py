"""`ServerContext`: everything a request handler may need, built once per process.

Theory of operation
- A context holds the store, the clock, the settings, a Prometheus registry of
  its own (never the global one, so two servers in one test process do not
  share counters) and the domain services, looked up by type.
- Domain API modules build their services while assembling routes
  (`routes(ctx)` in `crossway/server/api/<domain>.py`): they create the
  service, `ctx.provide(service)` it for other modules, and register
  `ctx.on_start(...)` / `ctx.on_close(...)` hooks for background work.
- `start()` runs the start hooks once, in order, inside the running event loop
  (after any fork, so background tasks and telemetry are owned by the serving
  process). `close()` runs the close hooks once, newest first, then closes the
  store: services stop before the store they write to disappears.
- `stopping` is set the moment shutdown begins (SIGTERM/SIGINT), before the
  server waits for in-flight requests. Long polls and event streams wait on it
  so they answer at once instead of holding shutdown up for their full wait.

Invariant: `close()` is idempotent and always closes the store, even when a
close hook fails (the failure is logged).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from crossway.core.clock import Clock, SystemClock
from crossway.server.settings import ServerSettings
from crossway.store.protocol import Store

log = logging.getLogger("crossway.server")

T = TypeVar("T")
Hook = Callable[[], Awaitable[None]]


class ServerContext:
    def __init__(
        self,
        *,
        store: Store,
        settings: ServerSettings | None = None,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.settings = settings if settings is not None else ServerSettings(store=store.name)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.stopping = asyncio.Event()
        self._services: dict[type[Any], Any] = {}
        self._start_hooks: list[Hook] = []
        self._close_hooks: list[Hook] = []
        self._started = False
        self._closed = False

    # Domain services.

    def provide(self, service: object, *, as_type: type[Any] | None = None) -> None:
        """Make `service` available to every route module as `service(type)`."""
        key = as_type if as_type is not None else type(service)
        if key in self._services:
            raise ValueError(f"a {key.__name__} is already provided")
        self._services[key] = service

    def service(self, kind: type[T]) -> T:
        """The service provided for `kind`; `LookupError` when there is none."""
        try:
            found: T = self._services[kind]
        except KeyError:
            raise LookupError(f"no {kind.__name__} has been provided") from None
        return found

    # Lifecycle.

    def on_start(self, hook: Hook) -> None:
        self._start_hooks.append(hook)

    def on_close(self, hook: Hook) -> None:
        self._close_hooks.append(hook)

    async def start(self) -> None:
        """Run the start hooks once. A failing hook propagates (start-up fails)."""
        if self._started:
            return
        self._started = True
        for hook in self._start_hooks:
            await hook()

    def begin_shutdown(self) -> None:
        """Tell long polls and streams to finish now. Safe to call repeatedly."""
        self.stopping.set()

    @property
    def shutting_down(self) -> bool:
        return self.stopping.is_set()

    async def close(self) -> None:
        """Run the close hooks newest first, then close the store; once.

        A hook that raises is logged and the others still run. On cancellation
        the store is still closed before the cancellation propagates.
        """
        if self._closed:
            return
        self._closed = True
        self.begin_shutdown()
        try:
            for hook in reversed(self._close_hooks):
                await _run_logged(hook)
        finally:
            await self.store.close()


async def _run_logged(hook: Hook) -> None:
    try:
        await hook()
    except Exception:
        log.exception("a shutdown hook failed", extra={"hook": repr(hook)})
