# Running a gateway process: listeners, configuration source, discovery.
#
# Theory of operation
# -------------------
# `serve_gateway(settings)` builds one `Gateway` and serves it on the proxy
# port and the admin pages on the admin port, on the running event loop,
# until cancelled. Its configuration comes from a YAML file (`config_path`,
# loaded once) or from the control plane (`follow_control_plane` swaps each
# new snapshot in whole). Endpoints come from the control plane's discovery
# (`DiscoveryCache`), one subscription per backend service the routes name;
# a configuration that names a new service subscribes to it.
#
# `run_gateway(settings)` is the process entry: with `workers > 1` it forks
# that many processes after validating the settings and before any event
# loop or background task exists (nothing runs "before fork"); each binds
# the proxy port with SO_REUSEPORT and the kernel spreads connections.
# Worker 0 alone serves the admin port.
#
# Invariants
# ----------
# - A gateway that cannot reach the control plane keeps its last good
#   configuration and endpoints (both sources only ever replace on success).
# - `/ready` answers 200 only once a configuration has been loaded.
# - Cancellation stops the listeners, the follower tasks and the pools.
from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import ssl
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from crossway.balance import Endpoint
from crossway.core.clock import SystemClock
from crossway.core.errors import InvalidArgument
from crossway.proxy.admin import AdminHandler, GatewayStats
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.ratelimit import REDIS_DEADLINE, routes_needing_redis
from crossway.proxy.routes.config import EMPTY, GatewayConfig, load_config
from crossway.proxy.routes.follow import follow_control_plane
from crossway.proxy.server import ProxyServer
from crossway.proxy.telemetry import (
    TelemetrySettings,
    build_telemetry,
    instance_name,
    parse_access_log,
)
from crossway.proxy.tls import server_context
from crossway.proxy.upstream import UpstreamPool
from crossway.resilience.resp import AsyncRespClient


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    """How to run one gateway; `control_plane` or `config_path` (or both)."""

    control_plane: str | None = None
    config_path: Path | None = None
    token: str | None = None
    host: str = "0.0.0.0"
    port: int = 7780
    admin_host: str = "127.0.0.1"
    admin_port: int = 7790
    workers: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    telemetry: bool = True
    """Golden signals and spans to the control plane (with `control_plane`)."""
    stats_interval: float = 10.0
    trace_sample_rate: float = 1.0
    access_log: str | None = None
    """`off`, `full` or `sample:R` (proxy/telemetry.py); None: the config
    file's `access_log`, else off."""
    redis_url: str | None = None
    """Redis for global rate limits; else the config file's `redis_url`."""


@dataclass(slots=True)
class _Running:
    gateway: Gateway
    ready: bool = False


async def serve_gateway(
    settings: GatewaySettings,
    *,
    worker: int = 0,
    started: asyncio.Future[tuple[int, int]] | None = None,
) -> None:
    """Serve until cancelled; `started` receives the bound (proxy, admin) ports.

    A bad config file raises `ConfigFileError` before anything listens.
    Cancellation closes the listeners and every connection.
    """
    clock = SystemClock()
    config = load_config(settings.config_path) if settings.config_path else EMPTY
    stats = GatewayStats()
    clusters = Clusters(clock=clock)
    telemetry = build_telemetry(_telemetry_settings(settings, config), clock=clock)
    redis = _redis(settings, config)
    gateway = Gateway(
        config,
        clusters=clusters,
        pool=UpstreamPool(clock=clock),
        stats=stats,
        telemetry=telemetry,
        redis=redis,
    )
    state = _Running(gateway, ready=settings.config_path is not None)
    server = ProxyServer(gateway, clock=clock)
    tls = _tls(settings)
    port = await server.start(
        settings.host, settings.port, reuse_port=settings.workers > 1, tls=tls
    )
    admin, admin_port = await _start_admin(settings, worker, state, server)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(server.stop)
        if admin is not None:
            stack.push_async_callback(admin.stop)
        stack.callback(gateway.pool.close)
        if redis is not None:
            stack.push_async_callback(_close_redis, redis)
        if telemetry is not None:
            await telemetry.start()
            stack.push_async_callback(telemetry.aclose)
        if settings.control_plane:
            await _follow(stack, settings, state)
        if started is not None:
            started.set_result((port, admin_port))
        await asyncio.Event().wait()


def _redis(
    settings: GatewaySettings, config: GatewayConfig
) -> AsyncRespClient | aioredis.Redis[bytes] | None:
    """The client for global rate limits (not connected yet: both connect on
    first use): the lean pipelined one for `redis://`, redis-py for what
    only it speaks (`rediss://`, `unix://`). Raises InvalidArgument for a URL
    neither can use, or a config file with global limits and no Redis,
    naming the routes."""
    url = settings.redis_url or config.redis_url
    if url is None:
        needing = routes_needing_redis(config.routes.items())
        if needing:
            raise InvalidArgument(
                f"route {', '.join(needing)}: rate_limit.scope global needs a Redis "
                "(--redis-url or redis_url: in the config file)",
                field="redis_url",
            )
        return None
    try:
        if url.startswith("redis://"):
            return AsyncRespClient.from_url(
                url, socket_timeout=REDIS_DEADLINE, connect_timeout=REDIS_DEADLINE
            )
        return aioredis.Redis.from_url(
            url, socket_timeout=REDIS_DEADLINE, socket_connect_timeout=REDIS_DEADLINE
        )
    except ValueError as exc:
        raise InvalidArgument(f"redis url {url!r}: {exc}", field="redis_url") from None


async def _close_redis(client: AsyncRespClient | aioredis.Redis[bytes]) -> None:
    # redis-py 5+ names it aclose; the typeshed stubs still know only close.
    await client.aclose()  # type: ignore[union-attr]


def _telemetry_settings(settings: GatewaySettings, config: GatewayConfig) -> TelemetrySettings:
    access_log = settings.access_log or config.access_log or "off"
    return TelemetrySettings(
        control_plane=settings.control_plane,
        token=settings.token,
        enabled=settings.telemetry,
        stats_interval=settings.stats_interval,
        trace_sample_rate=settings.trace_sample_rate,
        access_log=parse_access_log(access_log),
        instance=instance_name(),
    )


def _tls(settings: GatewaySettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise InvalidArgument("TLS needs both a certificate and a key file")
    return server_context(cert=settings.tls_cert, key=settings.tls_key)


async def _start_admin(
    settings: GatewaySettings, worker: int, state: _Running, server: ProxyServer
) -> tuple[ProxyServer | None, int]:
    if worker != 0:
        return None, 0
    gateway = state.gateway
    assert gateway.stats is not None
    handler = AdminHandler(
        gateway,
        stats=gateway.stats,
        ready=lambda: state.ready,
        active_connections=lambda: len(server.connections),
    )
    admin = ProxyServer(handler)
    return admin, await admin.start(settings.admin_host, settings.admin_port)


async def _follow(
    stack: contextlib.AsyncExitStack, settings: GatewaySettings, state: _Running
) -> None:
    # Imported here: the SDK client stack is only needed with a control plane.
    from crossway.sdk.control import ControlPlane
    from crossway.sdk.discovery import DiscoveryCache
    from crossway.sdk.settings import ClientSettings
    from crossway.sdk.transport import endpoints_of

    assert settings.control_plane is not None
    control = ControlPlane(ClientSettings(url=settings.control_plane, token=settings.token))
    stack.push_async_callback(control.aclose)
    cache = DiscoveryCache(control, cache_dir=None)
    await cache.start()
    stack.push_async_callback(cache.stop)
    gateway = state.gateway
    followed: set[str] = set()

    def on_instances(service: str, instances: Iterable[object]) -> None:
        endpoints: list[Endpoint] = endpoints_of(instances)  # type: ignore[arg-type]
        gateway.clusters.update(service, endpoints)

    def follow_services(config: GatewayConfig) -> None:
        for service in _services(config) - followed:
            followed.add(service)
            cache.subscribe(service, on_instances)

    def publish(config: GatewayConfig) -> None:
        follow_services(config)
        gateway.swap(config)
        state.ready = True

    follow_services(gateway.config)
    if settings.config_path is None:
        task = asyncio.get_running_loop().create_task(follow_control_plane(control, publish))
        stack.push_async_callback(_cancel, task)


def _services(config: GatewayConfig) -> set[str]:
    names: set[str] = set()
    for route in config.routes.values():
        names.update(b.service for b in route.backends)
        for header_route in route.header_routes:
            names.update(b.service for b in header_route.backends)
        if route.mirror is not None:
            names.add(route.mirror.service)
    return names


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run_gateway(settings: GatewaySettings) -> None:
    """Run the gateway in this process (and `workers - 1` forked ones) until signalled."""
    config = load_config(settings.config_path) if settings.config_path is not None else EMPTY
    _redis(settings, config)  # fail before forking, once (the client is not used)
    _tls(settings)
    _telemetry_settings(settings, config)
    children = [_fork(settings, worker) for worker in range(1, settings.workers)]
    try:
        _run_worker(settings, 0)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _fork(settings: GatewaySettings, worker: int) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _run_worker(settings, worker)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return pid


def tune_collector() -> None:
    """Make the cyclic garbage collector cheap for a long-running data plane.

    Everything alive at start-up (modules, the configuration) is moved out of
    the collector's sight with `gc.freeze()`, and the youngest generation
    holds 10,000 objects instead of 700 before a collection: a request
    allocates a few dozen short-lived objects, nearly all freed by reference
    counting, so the default threshold ran a collection every ~20 requests
    for nothing (-5.9% instructions per request in bench/gateway_inproc.py).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def _run_worker(settings: GatewaySettings, worker: int) -> None:
    import uvloop

    tune_collector()
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        runner.run(_until_signalled(settings, worker))


async def _until_signalled(settings: GatewaySettings, worker: int) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve_gateway(settings, worker=worker)
    sys.stdout.flush()
