"""The Crossway gateway as bench/gateway_bench.py runs it: static endpoints.

    python -m bench.gateway_server --port P --admin-port A --upstream 127.0.0.1:U1 \
        --upstream 127.0.0.1:U2 [--workers N]

One route (`path_prefix: /bench`) to one service whose endpoints are the
given upstreams, balanced with `peak_ewma` (P2C over peak EWMA latency),
statistics on (the admin port's /stats is served by worker 0). The
endpoints are fixed here instead of coming from a control plane, so the
benchmark measures the data plane alone. With `--workers N`, N processes
share the port with SO_REUSEPORT, as `crossway gateway --workers N` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal

import uvloop

from crossway.balance import Endpoint
from crossway.core.clock import SystemClock
from crossway.proxy.admin import AdminHandler, GatewayStats
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import route_from_object
from crossway.proxy.run import tune_collector
from crossway.proxy.server import ProxyServer
from crossway.proxy.upstream import UpstreamPool

SERVICE = "bench-upstream"
ROUTE = {
    "match": {"path_prefix": "/bench"},
    "backends": [{"service": SERVICE}],
    "balancer": "peak_ewma",
    "timeout": "5s",
}


async def serve(port: int, admin_port: int, upstreams: list[str], *, worker: int) -> None:
    clock = SystemClock()
    config = GatewayConfig({"bench": route_from_object(ROUTE)}, version="bench")
    clusters = Clusters(clock=clock)
    endpoints = []
    for i, upstream in enumerate(upstreams):
        host, _, upstream_port = upstream.rpartition(":")
        endpoints.append(Endpoint(f"u{i}", host, int(upstream_port)))
    clusters.update(SERVICE, endpoints)
    stats = GatewayStats()
    gateway = Gateway(config, clusters=clusters, pool=UpstreamPool(clock=clock), stats=stats)
    server = ProxyServer(gateway, clock=clock)
    await server.start("127.0.0.1", port, reuse_port=True)
    if worker == 0:
        admin = ProxyServer(
            AdminHandler(
                gateway,
                stats=stats,
                ready=lambda: True,
                active_connections=lambda: len(server.connections),
            )
        )
        await admin.start("127.0.0.1", admin_port)
    await asyncio.Event().wait()


def run(port: int, admin_port: int, upstreams: list[str], worker: int) -> None:
    async def until_signalled() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(port, admin_port, upstreams, worker=worker)

    tune_collector()  # as crossway gateway does
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(until_signalled())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--admin-port", type=int, required=True)
    parser.add_argument("--upstream", action="append", required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    children = []
    for worker in range(1, args.workers):
        pid = os.fork()
        if pid == 0:
            try:
                run(args.port, args.admin_port, args.upstream, worker)
            finally:
                os._exit(0)
        children.append(pid)
    try:
        run(args.port, args.admin_port, args.upstream, 0)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
