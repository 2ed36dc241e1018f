"""The gateway's hot path in one process, over in-memory transports.

    python -m bench.gateway_inproc [N] [--profile] [--telemetry]
    bench/gateway_ir.sh        # instructions per request under callgrind
    bench/gateway_ir.sh --telemetry

The real `ProxyServer`, `Gateway` (the bench route: prefix match, peak-EWMA
balancing over two endpoints, statistics on) and `UpstreamPool` run on
uvloop; the client and upstream sockets are replaced by fake transports
that answer at once (64 keep-alive clients, 64 pooled connections per
endpoint). Nothing else shares the process, so under
`valgrind --tool=callgrind` the instruction count per request repeats to
the instruction whatever the machine's load: the measure for hot-path work
on a shared machine. Without valgrind it prints process time per request.

`--telemetry` adds the gateway's telemetry as `build_telemetry` makes it
for `crossway gateway --control-plane URL` (every request traced, golden
signals recorded), with the control plane replaced by an in-memory HTTP
transport that answers 202: batches are still encoded and posted through
the real client. The reporter sends a batch when `GATEWAY_BATCH` spans are
waiting (its once-a-second timer, and the pusher's, are pushed out of the
run: under valgrind a second is a few hundred requests, not ~15,000), and
everything left is sent before the clock stops, so each run encodes every
span it made and the difference of two runs is the cost per request.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx2
import uvloop

from bench.gateway_server import ROUTE, SERVICE
from crossway.balance import Endpoint
from crossway.core.clock import SystemClock
from crossway.proxy.admin import GatewayStats
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import route_from_object
from crossway.proxy.run import tune_collector
from crossway.proxy.server import Http1Protocol, ProxyServer
from crossway.proxy.telemetry import (
    GatewayTelemetry,
    TelemetrySettings,
    build_telemetry,
    instance_name,
)
from crossway.proxy.upstream import UpstreamConnection, UpstreamPool

REQUEST = b"GET /bench/hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 12:12:31 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\r\n"
    b"hello from upstream\n"
)
CONNECTIONS = 64
CONTROL_PLANE = "http://127.0.0.1:7700"


class FakeTransport(asyncio.Transport):
    def __init__(self, on_write: Callable[[bytes], None]) -> None:
        super().__init__()
        self._on_write = on_write
        self._closing = False

    def write(self, data: Any) -> None:
        self._on_write(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self._on_write(b"".join(chunks))

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True


class ControlPlane:
    """Stands in for the control plane's span and stats endpoints: counts what
    it is sent and answers 202."""

    def __init__(self) -> None:
        self.posts = 0
        self.bytes = 0

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.posts += 1
        self.bytes += len(request.content)
        return httpx2.Response(202)

    def client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self))


def telemetry_for_bench(clock: SystemClock, control_plane: ControlPlane) -> GatewayTelemetry:
    settings = TelemetrySettings(control_plane=CONTROL_PLANE, instance=instance_name())
    telemetry = build_telemetry(settings, clock=clock)
    assert telemetry is not None
    assert telemetry.reporter is not None
    assert telemetry.pusher is not None
    # The timers only at the end: batches go when full, as at real rates.
    telemetry.reporter.flush_interval = 3600.0
    telemetry.pusher.interval = 3600.0
    telemetry.reporter._client = control_plane.client()
    telemetry.pusher._client = control_plane.client()
    return telemetry


async def run(requests: int, *, profile: bool, traced: bool) -> None:
    loop = asyncio.get_running_loop()
    clock = SystemClock()
    config = GatewayConfig({"bench": route_from_object(ROUTE)}, version="bench")
    clusters = Clusters(clock=clock)
    endpoints = [Endpoint("u0", "127.0.0.1", 1001), Endpoint("u1", "127.0.0.1", 1002)]
    clusters.update(SERVICE, endpoints)
    pool = UpstreamPool(clock=clock)
    control_plane = ControlPlane()
    telemetry = telemetry_for_bench(clock, control_plane) if traced else None
    if telemetry is not None:
        await telemetry.start()
    gateway = Gateway(
        config, clusters=clusters, pool=pool, stats=GatewayStats(), telemetry=telemetry
    )
    server = ProxyServer(gateway, clock=clock)
    for endpoint in endpoints:
        endpoint_pool = pool.endpoint((endpoint.address, endpoint.port))
        for _ in range(CONNECTIONS):
            conn = UpstreamConnection((endpoint.address, endpoint.port))

            def answer(_data: bytes, conn: UpstreamConnection = conn) -> None:
                loop.call_soon(conn.data_received, RESPONSE)

            conn.connection_made(FakeTransport(answer))
            conn.idle_since = clock.now() + 1e6
            endpoint_pool._idle.append(conn)
            endpoint_pool.active += 1
    done = loop.create_future()
    sent = answered = 0

    def client(protocol: Http1Protocol) -> Callable[[bytes], None]:
        def on_write(_data: bytes) -> None:
            nonlocal sent, answered
            answered += 1
            if sent < requests:
                sent += 1
                loop.call_soon(protocol.data_received, REQUEST)
            elif answered >= requests and not done.done():
                done.set_result(None)

        return on_write

    protocols = []
    for _ in range(CONNECTIONS):
        protocol = Http1Protocol(server)
        protocol.connection_made(FakeTransport(client(protocol)))
        protocols.append(protocol)
    tune_collector()
    profiler = cProfile.Profile(time.process_time) if profile else None
    start = time.process_time()
    if profiler is not None:
        profiler.enable()
    for protocol in protocols:
        sent += 1
        protocol.data_received(REQUEST)
    await done
    if telemetry is not None:  # every span encoded and posted within the run
        await telemetry.aclose()
    if profiler is not None:
        profiler.disable()
    elapsed = time.process_time() - start
    print(f"{1e6 * elapsed / requests:.1f} µs/request (process time), {requests} requests")
    if telemetry is not None:
        assert telemetry.reporter is not None
        stats = telemetry.reporter.stats
        print(
            f"telemetry: {stats.sent} spans sent in {stats.batches} batches "
            f"({stats.dropped} dropped), {control_plane.posts} posts, "
            f"{control_plane.bytes:,} bytes"
        )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(
            int(os.environ.get("PROFILE_ROWS", "30"))
        )


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    requests = int(args[0]) if args else 40000
    flags = sys.argv[1:]
    uvloop.run(run(requests, profile="--profile" in flags, traced="--telemetry" in flags))


if __name__ == "__main__":
    main()
