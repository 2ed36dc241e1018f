"""`Client`: one object a service creates, starts, uses and closes.

Theory of operation
- Construction only reads settings (arguments, then `CROSSWAY_*`) and builds
  plain objects: no task, no socket, no thread. A client may therefore be
  made at import time of a module served by a pre-fork server (gunicorn,
  uvicorn --workers); the work starts in `start()`, in the worker.
- `start()` starts the discovery cache, then (with `register=True`)
  registers the service and keeps its lease alive in the background, then
  starts the coordination helpers declared so far (leaders, scheduled jobs).
  A control plane that cannot be reached does not fail `start()`: the service
  boots, discovery serves its disk snapshot, and registration keeps trying
  in the background. A refusal (bad settings, wrong token) does fail it.
- With a service name (and `telemetry` on, the default), `start()` also
  starts pushing golden signals and spans to the control plane
  (`client.telemetry`, crossway.sdk.telemetry), fed by `CrosswayMiddleware`
  and the `http()` transports.
- `stop()` undoes all of that in reverse: helpers resign (so another process
  takes over leadership at once), the instance is deregistered (best effort,
  bounded), the last signals and spans are sent (bounded), the discovery
  cache writes its snapshots, and the HTTP client closes. Every background
  task is cancelled and awaited; nothing leaks.
- The instance id is fixed at `start()`: the default (`{service}-{hostname}-
  {pid}`) therefore names the worker process, not the parent that forked it.
- `http()`, `http_sync()` and `bind()` import the modules that implement them
  on first use, so a program that only registers pays for nothing else.

A client is started once; after `stop()` make a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2
from prometheus_client import CollectorRegistry

from crossway.core.clock import Clock, SystemClock
from crossway.core.durations import parse_duration
from crossway.sdk.control import ControlPlane, ControlPlaneError
from crossway.sdk.coordination import Callback, Leader, Lock, ScheduledJob, job_election
from crossway.sdk.discovery import DiscoveryCache
from crossway.sdk.keepalive_stream import KeepaliveChannel
from crossway.sdk.registration import Registrar, registration_body
from crossway.sdk.settings import ClientSettings, InvalidSettings
from crossway.sdk.telemetry import ServiceTelemetry

if TYPE_CHECKING:
    from crossway.sdk.config import BoundConfig

M = TypeVar("M")
F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("crossway.sdk")


class Client:
    """The SDK's entry point; see the module header.

    `Client(service="orders", port=8080)` or `Client(settings=ClientSettings(...))`;
    keyword overrides win over `settings` and over the environment.
    """

    def __init__(
        self,
        *,
        settings: ClientSettings | None = None,
        register: bool = True,
        metrics_registry: CollectorRegistry | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = ClientSettings.from_env(**overrides)
        elif overrides:
            settings = dataclasses.replace(settings, **overrides)
        self.settings = settings
        self.register = register
        self.clock = clock or SystemClock()
        self.metrics_registry = metrics_registry or CollectorRegistry(auto_describe=True)
        self.control = ControlPlane(settings, transport=transport)
        self.discovery = DiscoveryCache(
            self.control,
            cache_dir=settings.cache_dir,
            metrics_registry=self.metrics_registry,
            clock=self.clock,
        )
        self.keepalives = KeepaliveChannel(
            self.control, streaming=transport is None, clock=self.clock
        )
        """Lease renewals: one stream to the control plane shared by every
        registration of this client (PUT with a custom `transport`)."""
        self.telemetry = ServiceTelemetry.for_settings(settings, http=self.control.http)
        """Golden signals and spans of this service; None without a service name."""
        self._instance_id = settings.instance_id
        self._registrar: Registrar | None = None
        self._deferred: asyncio.Task[None] | None = None
        self._helpers: list[Leader | ScheduledJob] = []
        self._state = "new"
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop the client was started in (for sync callers in other threads)."""

    # -- lifecycle -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._state == "started"

    async def start(self, *, register_after: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start discovery, register (if asked), start the coordination helpers.

        Raises `InvalidSettings` when registering without a service or port,
        `ControlPlaneError` when the control plane refuses the registration,
        and `RuntimeError` when called twice. On any failure or cancellation,
        whatever was started is stopped again before the error propagates.

        With `register_after`, registering waits in the background until that
        awaitable is done (the lifespan passes "the server listens"); an
        unreachable control plane is retried as always, and a refusal is
        logged as an error instead of raised.
        """
        if self._state != "new":
            raise RuntimeError(f"this client is already {self._state}; make a new one")
        self._state = "started"
        self.loop = asyncio.get_running_loop()
        self._instance_id = self.settings.resolved_instance_id()
        try:
            await self.discovery.start()
            if self.telemetry is not None:
                await self.telemetry.start(self._instance_id)
            if self.register and register_after is None:
                await self._start_registration()
            elif self.register and register_after is not None:
                self._registrar_for()  # bad settings fail the start, not the task
                self._deferred = asyncio.create_task(
                    self._register_when(register_after), name="crossway-register"
                )
            for helper in self._helpers:
                helper.start()
        except BaseException:
            await self._shutdown(deregister=False)
            raise

    async def stop(self, *, deregister: bool = True) -> None:
        """Resign, deregister (bounded, best effort), stop discovery, close.

        Idempotent. Failures while stopping are logged, never raised; if
        `stop` is cancelled, the remaining steps still run before the
        cancellation propagates.
        """
        if self._state == "stopped":
            return
        await self._shutdown(deregister=deregister)

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start_registration(self) -> None:
        self._registrar = self._registrar_for()
        await self._registrar.start()

    def _registrar_for(self) -> Registrar:
        service = self.settings.service
        if service is None:
            raise InvalidSettings(
                "registering needs a service name: set service= or CROSSWAY_SERVICE "
                "(or pass register=False)",
                field="service",
            )
        return Registrar(
            self.control,
            service=service,
            instance_id=self.instance_id,
            body=registration_body(self.settings),
            ttl=self.settings.ttl_seconds,
            clock=self.clock,
            keepalives=self.keepalives,
        )

    async def _register_when(self, ready: Callable[[], Awaitable[None]]) -> None:
        await ready()
        try:
            await self._start_registration()
        except ControlPlaneError as exc:
            # What `start` would have raised; the server is up by now, so say it
            # loudly and carry on unregistered rather than kill the service.
            log.error("the control plane refused to register %s: %s", self.instance_id, exc)
            self._registrar = None

    async def _shutdown(self, *, deregister: bool) -> None:
        self._state = "stopped"
        if self._deferred is not None:  # still waiting to register: nothing to undo there
            self._deferred.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._deferred
        # Resign first (another process takes over at once), then deregister,
        # then stop following and close the connections.
        steps: list[Callable[[], Awaitable[None]]] = [h.stop for h in reversed(self._helpers)]
        config = sys.modules.get("crossway.sdk.config")
        if config is not None:  # bound settings stop following with their client
            steps.append(functools.partial(config.stop_bindings, self))
        if self._registrar is not None:
            steps.append(functools.partial(self._registrar.stop, deregister=deregister))
        steps.append(self.keepalives.aclose)
        if self.telemetry is not None:
            steps.append(self.telemetry.stop)
        steps += [self.discovery.stop, self.control.aclose]
        cancelled: asyncio.CancelledError | None = None
        for step in steps:
            try:
                await step()
            except asyncio.CancelledError as exc:
                cancelled = exc  # finish the remaining steps, then propagate it
            except Exception:
                log.exception("a step of stopping the client failed")
        if cancelled is not None:
            raise cancelled

    # -- identity --------------------------------------------------------------------

    @property
    def instance_id(self) -> str:
        """The id this process registers under (fixed once started)."""
        return self._instance_id or self.settings.default_instance_id()

    @property
    def lease(self) -> str | None:
        """The lease of the registration, None before it (or without one)."""
        return self._registrar.lease if self._registrar is not None else None

    @property
    def labels(self) -> Mapping[str, str]:
        return self.settings.labels

    @property
    def registrations(self) -> int:
        """Successful registrations so far (1 after start, more after re-registrations)."""
        return self._registrar.registrations if self._registrar is not None else 0

    # -- coordination ----------------------------------------------------------------

    def lock(
        self,
        name: str,
        *,
        ttl: str | float = "10s",
        wait: str | float | None = None,
        cancel_on_loss: bool = True,
    ) -> Lock:
        """A lock for `async with client.lock("name") as fence:`.

        `ttl` bounds how long a crashed holder keeps it; `wait` how long to
        wait for it (None: as long as it takes; `LockNotAcquired` after).
        If the lock's session is lost while the block runs, the block is
        cancelled and `LockLost` raised (see crossway.sdk.coordination): send
        `fence` with every write so storage can refuse a holder overtaken
        anyway (docs/coordination.md, "Fencing tokens").
        """
        return Lock(
            self.control,
            name,
            ttl=parse_duration(ttl),
            wait=None if wait is None else parse_duration(wait),
            session_name=f"{self.instance_id} lock {name}",
            cancel_on_loss=cancel_on_loss,
            clock=self.clock,
        )

    def leader(
        self,
        name: str,
        *,
        value: str | None = None,
        on_elected: Callback | None = None,
        on_revoked: Callback | None = None,
        ttl: str | float = "10s",
    ) -> Leader:
        """Campaign for leadership of `name` while this client runs.

        `on_elected(fence)` and `on_revoked()` may be plain or async
        functions; an `on_elected` coroutine still running when leadership
        ends is cancelled. `value` (default: the instance id) is what the
        others learn about the leader. Campaigning starts with the client (or
        at once if it already runs) and ends with `stop()`, which resigns.
        """
        # The default value and the session's name use the instance id, which
        # is only final once started (after a pre-fork server forked): both
        # are worked out when the campaign begins.
        leader = Leader(
            self.control,
            name,
            value=value if value is not None else lambda: self.instance_id,
            ttl=parse_duration(ttl),
            session_name=lambda: f"{self.instance_id} leader {name}",
            on_elected=on_elected,
            on_revoked=on_revoked,
            clock=self.clock,
        )
        self._adopt(leader)
        return leader

    def scheduled(
        self, every: str | float = "1m", *, name: str | None = None, ttl: str | float = "10s"
    ) -> Callable[[F], F]:
        """Decorator: run the function every `every` on one process of the
        cluster only — the leader of election `job.<name>` (default name: the
        function's module and qualified name). The function is returned
        unchanged; see `ScheduledJob` for overlapping and failing runs."""
        period = parse_duration(every)

        def decorate(fn: F) -> F:
            election = job_election(name or f"{fn.__module__}.{fn.__qualname__}")

            def make_leader(on_elected: Callback) -> Leader:
                return self._leader_for_job(election, on_elected, parse_duration(ttl))

            self._adopt(ScheduledJob(fn, every=period, leader=make_leader, clock=self.clock))
            return fn

        return decorate

    def _leader_for_job(self, election: str, on_elected: Callback, ttl: float) -> Leader:
        return Leader(
            self.control,
            election,
            value=lambda: self.instance_id,
            ttl=ttl,
            session_name=lambda: f"{self.instance_id} job {election}",
            on_elected=on_elected,
            clock=self.clock,
        )

    def _adopt(self, helper: Leader | ScheduledJob) -> None:
        if self._state == "stopped":
            raise RuntimeError("this client is stopped")
        self._helpers.append(helper)
        if self._state == "started":
            helper.start()

    # -- accessors implemented by other modules, imported on first use ------------

    def http(self, **httpx_kwargs: Any) -> httpx2.AsyncClient:
        """An `httpx2.AsyncClient` whose `http://<service>/…` URLs resolve
        through discovery, with the service's call policy applied."""
        from crossway.sdk.transport import async_client

        client: httpx2.AsyncClient = async_client(self, **httpx_kwargs)
        return client

    def http_sync(self, **httpx_kwargs: Any) -> httpx2.Client:
        """The synchronous twin of `http()`."""
        from crossway.sdk.transport import sync_client

        client: httpx2.Client = sync_client(self, **httpx_kwargs)
        return client

    def bind(
        self,
        model_cls: type[M],
        key: str,
        *,
        group: str = "DEFAULT_GROUP",
        namespace: str | None = None,
        on_change: Any = None,
    ) -> BoundConfig[M]:
        """A settings object bound to a config entry, updated in place on change."""
        from crossway.sdk.config import bind

        bound: BoundConfig[M] = bind(
            self, model_cls, key, group=group, namespace=namespace, on_change=on_change
        )
        return bound
