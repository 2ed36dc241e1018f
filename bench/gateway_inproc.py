"""The gateway's hot path in one process, over in-memory transports.

    python -m bench.gateway_inproc [N] [--profile]
    bench/gateway_ir.sh        # instructions per request under callgrind

The real `ProxyServer`, `Gateway` (the bench route: prefix match, peak-EWMA
balancing over two endpoints, statistics on) and `UpstreamPool` run on
uvloop; the client and upstream sockets are replaced by fake transports
that answer at once (64 keep-alive clients, 64 pooled connections per
endpoint). Nothing else shares the process, so under
`valgrind --tool=callgrind` the instruction count per request repeats to
the instruction whatever the machine's load: the measure for hot-path work
on a shared machine. Without valgrind it prints process time per request.
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
from crossway.proxy.upstream import UpstreamConnection, UpstreamPool

REQUEST = b"GET /bench/hello HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 12:12:31 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\r\n"
    b"hello from upstream\n"
)
CONNECTIONS = 64


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


async def run(requests: int, *, profile: bool) -> None:
    loop = asyncio.get_running_loop()
    clock = SystemClock()
    config = GatewayConfig({"bench": route_from_object(ROUTE)}, version="bench")
    clusters = Clusters(clock=clock)
    endpoints = [Endpoint("u0", "127.0.0.1", 1001), Endpoint("u1", "127.0.0.1", 1002)]
    clusters.update(SERVICE, endpoints)
    pool = UpstreamPool(clock=clock)
    gateway = Gateway(config, clusters=clusters, pool=pool, stats=GatewayStats())
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
    if profiler is not None:
        profiler.disable()
    elapsed = time.process_time() - start
    print(f"{1e6 * elapsed / requests:.1f} µs/request (process time), {requests} requests")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(
            int(os.environ.get("PROFILE_ROWS", "30"))
        )


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    requests = int(args[0]) if args else 40000
    uvloop.run(run(requests, profile="--profile" in sys.argv))


if __name__ == "__main__":
    main()
