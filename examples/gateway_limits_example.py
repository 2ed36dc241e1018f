"""The gateway's resilience and limits, live on loopback: a route rate limit
(429 + Retry-After), a service's concurrency limit (503 max_requests) and
its circuit breaker (503 breaker_open, then half-open and closed again),
with the counters the admin page shows.

    .venv/bin/python examples/gateway_limits_example.py
"""

from __future__ import annotations

import asyncio

import httpx

from crossway.balance import Endpoint
from crossway.core.clock import SystemClock
from crossway.proxy.admin import GatewayStats, render_stats
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.routes.config import parse_config
from crossway.proxy.server import ProxyServer
from crossway.proxy.upstream import UpstreamPool

CONFIG = """\
routes:
  api:
    match: {path_prefix: /api}
    backends: [{service: orders}]
    rate_limit: {rate: 1/s, burst: 5, key: client_ip}
  orders:
    match: {path_prefix: /orders}
    backends: [{service: orders}]
    timeout: 2s
    retries: {attempts: 3, budget: {percent: 20, min_per_second: 1}}
policies:
  orders:
    bulkhead: {max_concurrent: 2}
    breaker: {failures: 3, open_for: 1s}
"""


async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A tiny service: /orders/slow takes 300 ms, /orders/fail answers 500."""
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            path = head.split(b" ", 2)[1]
            if path.endswith(b"/slow"):
                await asyncio.sleep(0.3)
            status = b"500 Internal Server Error" if path.endswith(b"/fail") else b"200 OK"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # the gateway closed its pooled connection
    finally:
        writer.close()


async def main() -> None:
    service = await asyncio.start_server(upstream, "127.0.0.1", 0)
    service_port = service.sockets[0].getsockname()[1]
    clusters = Clusters(clock=SystemClock())
    clusters.update("orders", [Endpoint("orders-1", "127.0.0.1", service_port)])
    gateway = Gateway(
        parse_config(CONFIG), clusters=clusters, pool=UpstreamPool(), stats=GatewayStats()
    )
    server = ProxyServer(gateway)
    port = await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await tour(client)
    finally:
        await server.stop()
        gateway.pool.close()
        await asyncio.sleep(0.05)  # the service's handlers see their connections close
        service.close()
        await service.wait_closed()
    assert gateway.stats is not None
    print("\n/stats (resilience counters):")
    shown = (
        "crossway_gateway_upstream_overloaded",
        "crossway_gateway_breaker",
        "crossway_gateway_rate",
    )
    for line in render_stats(gateway.stats, gateway, 0).splitlines():
        if line.startswith(shown):
            print("  " + line)


async def tour(client: httpx.AsyncClient) -> None:
    print("rate limit: 8 requests to /api, burst 5")
    for _ in range(8):
        answer = await client.get("/api/items")
        after = answer.headers.get("retry-after")
        print(f"  {answer.status_code}" + (f" retry-after={after}" if after else ""))
    assert answer.status_code == 429

    print("concurrency: 4 slow requests at once to orders (max_concurrent 2)")
    answers = await asyncio.gather(*(client.get("/orders/slow") for _ in range(4)))
    for answer in answers:
        print(f"  {answer.status_code} {answer.headers.get('x-crossway-overloaded', '')}")
    assert sorted(a.status_code for a in answers) == [200, 200, 503, 503]

    print("breaker: 3 failures open it, a request is refused, 1 s later a probe closes it")
    for _ in range(3):
        print(f"  /orders/fail -> {(await client.get('/orders/fail')).status_code}")
    refused = await client.get("/orders/ok")
    print(f"  /orders/ok -> {refused.status_code} {refused.headers['x-crossway-overloaded']}")
    await asyncio.sleep(1.1)
    print(f"  after 1 s: /orders/ok -> {(await client.get('/orders/ok')).status_code}")


if __name__ == "__main__":
    asyncio.run(main())
