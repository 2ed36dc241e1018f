"""Running the control plane process: bind, open the store, serve, shut down cleanly.

Theory of operation
- The server process collects cyclic garbage rarely (`GC_THRESHOLDS`). Its
  large, long-lived state is kept out of the collector (the registry's
  instances and the lease table are `gc=False` structs) and request garbage
  is freed by reference counting, yet with Python's default thresholds a
  busy server ran a full collection every second or two, each ~100 ms with
  100,000 instances (the big dicts are still traversed) and each finding
  nothing: that pause was the p99 of watchers and blocking queries. Young
  cycles are still collected within 10,000 allocations.
- Everything that can fail for a reason the operator can fix is checked
  before the first request and reported as a `StartupError` with one sentence:
  the settings (`ServerSettings.check`), then the listening socket (bound
  here, not by uvicorn, so "port in use" is our clear message and not a log
  line and an exit from deep inside uvicorn), then the store (opened and asked
  for its revision within `store_timeout`, so an unreachable etcd or an
  unwritable data directory is reported as such).
- uvicorn (httptools on uvloop) serves the app on that socket, one process.
  Its connections write through a `CorkedTransport`: uvicorn writes a
  response's head and its body separately, two system calls (and, on
  loopback, two trips through the TCP stack) per answer; gathering the writes
  of one event-loop iteration into one `writelines` makes it one, which pays
  most on large answers (a discovery answer of 100 instances: about 1.5x).
  uvicorn's own signal handling re-raises the signal after shutdown (the
  process would die by SIGTERM instead of exiting 0), so it is replaced: our
  handler starts the shutdown, a second signal forces it.
- Shutdown, on SIGTERM or SIGINT: `ctx.begin_shutdown()` first, so long polls
  answer and event streams end at once and `/readyz` turns 503; then uvicorn
  stops accepting, lets in-flight requests finish for up to `shutdown_grace`
  seconds (cancelling what is left after that), and returns; finally
  `ctx.close()` stops the domain services and closes the store. The process
  then exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import math
import os
import signal
import socket
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from crossway.core.clock import Clock
from crossway.core.errors import CrosswayError
from crossway.server.app import RouteProvider, create_app
from crossway.server.context import ServerContext
from crossway.server.logs import configure_logging
from crossway.server.settings import ServerSettings
from crossway.store.open import open_store
from crossway.store.protocol import Store

log = logging.getLogger("crossway.server")

GC_THRESHOLDS = (10_000, 50, 100)
"""Collector thresholds of the server process (see the module header)."""


class StartupError(CrosswayError):
    """The server cannot start; the message says why in one sentence."""

    code = "startup_failed"


def run_server(settings: ServerSettings, *, configure_logs: bool = True) -> None:
    """Run `crossway server` in this thread until SIGTERM/SIGINT.

    Returns after a clean shutdown. Raises `InvalidArgument` for settings that
    cannot work and `StartupError` when the socket or the store cannot be
    opened; nothing has been left running in either case.
    """
    settings.check()
    if configure_logs:
        configure_logging(settings.log_level, settings.log_format)
    gc.set_threshold(*GC_THRESHOLDS)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(settings))


async def serve(
    settings: ServerSettings,
    *,
    clock: Clock | None = None,
    extra: Sequence[RouteProvider] = (),
    shutdown: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (see the module header); `extra` route
    providers are added after the built-in ones. Must run in the main thread
    (signal handlers). Cancellation closes the store and propagates.

    With `shutdown`, the caller owns the signals (as `crossway up` does, to
    stop its services first): no handler is installed, and setting the event
    shuts the server down as SIGTERM would."""
    stopper = _Stopper()
    stop_on = _signal_handlers(stopper) if shutdown is None else _stop_when(shutdown, stopper)
    with stop_on, bind_socket(settings.bind, settings.port) as sock:
        ctx = await open_context(settings, clock=clock)
        stopper.ctx = ctx
        try:
            app = create_app(ctx, extra=extra)  # route providers register their start hooks
            await _start_services(ctx)
            if stopper.requested:
                return
            server = _Server(_uvicorn_config(app, settings))
            stopper.server = server
            _log_listening(sock, settings, ctx)
            await server.serve(sockets=[sock])
        finally:
            await ctx.close()
            log.info("crossway server stopped")


async def _start_services(ctx: ServerContext) -> None:
    try:
        await ctx.start()
    except Exception as exc:
        log.debug("a start hook failed", exc_info=True)
        raise StartupError(f"a service failed to start: {_reason(exc)}") from exc


async def open_context(settings: ServerSettings, *, clock: Clock | None = None) -> ServerContext:
    """A `ServerContext` over a freshly opened store (`StartupError` if it cannot be)."""
    store = await open_server_store(settings, clock=clock)
    return ServerContext(store=store, settings=settings, clock=clock, registry=process_registry())


async def open_server_store(settings: ServerSettings, *, clock: Clock | None = None) -> Store:
    """Open the store of `settings` and make sure it answers, within
    `store_timeout`. Raises `StartupError` naming the store and the reason."""
    what = _store_description(settings)
    try:
        async with asyncio.timeout(settings.store_timeout):
            return await _open_and_probe(settings, clock)
    except StartupError:
        raise
    except TimeoutError:
        raise StartupError(f"{what}: no answer within {settings.store_timeout:g}s") from None
    except CrosswayError as exc:
        # The etcd backend's own messages already start "cannot reach etcd …".
        message = exc.message if exc.message.startswith("cannot") else f"{what}: {exc.message}"
        raise StartupError(message) from None
    except Exception as exc:
        log.debug("store open failed", exc_info=True)
        raise StartupError(f"{what}: {_reason(exc)}") from None


async def _open_and_probe(settings: ServerSettings, clock: Clock | None) -> Store:
    if settings.store == "sqlite":
        prepare_data_dir(settings.data_dir)
    if settings.store == "etcd" and not _etcd_backend_present():
        raise StartupError("the etcd store backend is not installed in this build")
    store = await open_store(
        settings.store,
        data_dir=settings.data_dir,
        etcd_endpoints=settings.etcd_endpoints,
        clock=clock,
    )
    try:
        await store.revision()
    except BaseException:
        await store.close()
        raise
    return store


def prepare_data_dir(path: Path) -> None:
    """Create `path` if needed; `StartupError` when it is not a writable directory."""
    if path.exists() and not path.is_dir():
        raise StartupError(f"--data-dir {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the data directory {path}: {_reason(exc)}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"the data directory {path} is not writable")


@contextlib.contextmanager
def bind_socket(host: str, port: int) -> Iterator[socket.socket]:
    """A TCP socket bound to `host:port` (not yet listening), closed on exit.
    `StartupError` for an address in use, not local, or not permitted."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {host}: the name does not resolve ({exc.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    with sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as exc:
            raise StartupError(_bind_problem(host, port, exc)) from None
        yield sock


def process_registry() -> CollectorRegistry:
    """A registry of our own, with the standard process, platform and GC metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (see the module header)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class CorkedTransport(asyncio.Transport):
    """A transport that sends what is written during one event-loop iteration
    with one system call, at the end of that iteration (see the module header).

    Everything but writing is passed straight through. `close()` sends what is
    pending first; writes pending when the peer is already gone are dropped, as
    the transport itself would drop them."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes | bytearray | memoryview] = []
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._pending.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        if not pending or self._transport.is_closing():
            return
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(d) for d in self._pending)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()


class CorkedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `CorkedTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CorkedTransport(transport, asyncio.get_running_loop()))


class _Stopper:
    """The signal handler: first signal shuts down gracefully, the second forces."""

    def __init__(self) -> None:
        self.requested = 0
        self.ctx: ServerContext | None = None
        self.server: uvicorn.Server | None = None

    def __call__(self, signum: int) -> None:
        self.requested += 1
        name = signal.Signals(signum).name
        log.info("received %s, shutting down", name, extra={"signal": name})
        if self.ctx is not None:
            self.ctx.begin_shutdown()
        if self.server is not None:
            self.server.force_exit = self.requested > 1
            self.server.should_exit = True


@contextlib.contextmanager
def _stop_when(event: asyncio.Event, stopper: _Stopper) -> Iterator[None]:
    async def wait() -> None:
        await event.wait()
        stopper(signal.SIGTERM)

    waiter = asyncio.get_running_loop().create_task(wait())
    try:
        yield
    finally:
        waiter.cancel()


@contextlib.contextmanager
def _signal_handlers(handler: Callable[[int], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, handler, signum)
    try:
        yield
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _uvicorn_config(app: object, settings: ServerSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        http=CorkedHttpProtocol,
        ws="none",
        lifespan="off",  # `serve` drives ctx.start()/ctx.close() itself
        log_config=None,
        access_log=False,  # RequestObserver writes the access log
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_grace)),
    )


def _log_listening(sock: socket.socket, settings: ServerSettings, ctx: ServerContext) -> None:
    host, port = sock.getsockname()[:2]
    address = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    auth = "token" if settings.auth_enabled else "none"
    log.info(
        "crossway server listening on %s",
        address,
        extra={"address": address, "port": port, "store": ctx.store.name, "auth": auth},
    )
    if settings.insecure and not settings.auth_enabled:
        log.warning("--insecure: the API is open to anyone who can reach %s", address)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _etcd_backend_present() -> bool:
    import importlib.util

    return importlib.util.find_spec("crossway.store.etcd") is not None


def _store_description(settings: ServerSettings) -> str:
    if settings.store == "etcd":
        return f"cannot reach etcd at {', '.join(settings.etcd_endpoints)}"
    if settings.store == "sqlite":
        return f"cannot open the sqlite store in {settings.data_dir}"
    return f"cannot open the {settings.store} store"


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the port is already in use (choose another --port)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: {host} is not an address of this machine"
    return f"cannot listen on {where}: {_reason(exc)}"


def _reason(exc: BaseException) -> str:
    """One line about `exc`, for people: no class paths, no newlines."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    elif isinstance(exc, sqlite3.Error):
        text = str(exc) or "sqlite error"
    else:
        text = str(exc) or type(exc).__name__
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."
