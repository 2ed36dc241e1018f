"""Per-service circuit breaking through a real gateway and real upstreams:
the call policy's bulkhead (max requests / pending) and breaker."""

from __future__ import annotations

import asyncio
import json

from crossway.core.clock import SystemClock
from crossway.proxy.admin import GatewayStats, render_stats
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import decode_route
from crossway.proxy.upstream import UpstreamPool
from crossway.traffic.policy import BreakerSpec, BulkheadSpec, CallPolicy, decode_policy

from .test_gateway import endpoint, running
from .upstreams import raw_upstream, uvicorn_upstream

ROUTE = {"match": {"path_prefix": "/"}, "backends": [{"service": "svc"}]}


def build(port: int, policies: dict[str, CallPolicy], route: dict[str, object] = ROUTE) -> Gateway:
    clusters = Clusters(clock=SystemClock())
    clusters.update("svc", [endpoint(port)])
    config = GatewayConfig({"r": decode_route(json.dumps(route))}, "1", policies=policies)
    return Gateway(config, clusters=clusters, pool=UpstreamPool(), stats=GatewayStats())


async def test_max_requests_refuses_with_the_overloaded_header() -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_upstream(slow) as (port, _):
        policy = CallPolicy(bulkhead=BulkheadSpec(max_concurrent=2))
        gw = build(port, {"svc": policy})
        async with running(gw) as client:
            held = [asyncio.ensure_future(client.get(f"/{i}")) for i in range(2)]
            for _ in range(200):  # until both are in flight upstream
                guard = gw.guards.get("svc")
                if guard is not None and guard.core is not None and guard.core.active == 2:
                    break
                await asyncio.sleep(0.01)
            refused = await client.get("/third")
            release.set()
            answers = await asyncio.gather(*held)
    assert refused.status_code == 503
    assert refused.headers["x-crossway-overloaded"] == "max_requests"
    assert refused.json()["error"]["code"] == "upstream_overloaded"
    assert [a.status_code for a in answers] == [200, 200]
    assert gw.stats is not None
    text = render_stats(gw.stats, gw, 0)
    assert (
        'crossway_gateway_upstream_overloaded_total{service="svc",reason="max_requests"} 1' in text
    )


async def test_max_pending_waits_then_refuses_when_the_queue_is_full() -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_upstream(slow) as (port, _):
        policy = CallPolicy(bulkhead=BulkheadSpec(max_concurrent=1, max_queue=1))
        gw = build(port, {"svc": policy})
        async with running(gw) as client:
            first = asyncio.ensure_future(client.get("/1"))
            queued = asyncio.ensure_future(client.get("/2"))
            for _ in range(200):
                guard = gw.guards.get("svc")
                if guard is not None and guard.core is not None and guard.core.waiting == 1:
                    break
                await asyncio.sleep(0.01)
            refused = await client.get("/3")
            release.set()
            answers = await asyncio.gather(first, queued)
    assert refused.status_code == 503
    assert refused.headers["x-crossway-overloaded"] == "max_pending"
    assert [a.status_code for a in answers] == [200, 200]  # the queued one got its turn


async def test_the_breaker_opens_after_failures_and_half_opens_after_open_for() -> None:
    async with uvicorn_upstream() as port:
        policy = CallPolicy(breaker=BreakerSpec(failures=3, open_for="300ms"))
        gw = build(port, {"default": policy})
        async with running(gw) as client:
            failing = [(await client.get("/status?code=500")).status_code for _ in range(3)]
            refused = await client.get("/hello")
            await asyncio.sleep(0.35)
            probe = await client.get("/hello")  # half-open: the probe succeeds
            after = await client.get("/hello")
    assert failing == [500, 500, 500]
    assert refused.status_code == 503
    assert refused.headers["x-crossway-overloaded"] == "breaker_open"
    assert refused.json()["error"]["code"] == "breaker_open"
    assert (probe.status_code, after.status_code) == (200, 200)
    assert gw.stats is not None
    assert gw.stats.breaker_trips["svc"] == 1


async def test_a_failed_probe_opens_the_breaker_again() -> None:
    async with uvicorn_upstream() as port:
        policy = CallPolicy(breaker=BreakerSpec(failures=1, open_for="200ms"))
        gw = build(port, {"svc": policy})
        async with running(gw) as client:
            await client.get("/status?code=503")
            await asyncio.sleep(0.25)
            probe = await client.get("/status?code=503")
            refused = await client.get("/hello")
    assert probe.status_code == 503
    assert "x-crossway-overloaded" not in probe.headers
    assert refused.headers["x-crossway-overloaded"] == "breaker_open"
    assert gw.stats is not None
    assert gw.stats.breaker_trips["svc"] == 2


async def test_a_service_without_a_policy_is_not_limited() -> None:
    async with uvicorn_upstream() as port:
        gw = build(port, {"other": CallPolicy(bulkhead=BulkheadSpec(max_concurrent=1))})
        async with running(gw) as client:
            answers = await asyncio.gather(*(client.get(f"/{i}") for i in range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert gw.guards.get("svc") is None


async def test_the_outlier_section_configures_ejection() -> None:
    async with uvicorn_upstream() as good:
        clusters = Clusters(clock=SystemClock())
        clusters.update("svc", [endpoint(1, "dead"), endpoint(good, "good")])
        policy = json.loads('{"outlier": {"consecutive_5xx": 1, "max_ejection_percent": 50}}')
        config = GatewayConfig(
            {"r": decode_route(json.dumps(ROUTE))},
            "1",
            policies={"svc": decode_policy(json.dumps(policy))},
        )
        gw = Gateway(config, clusters=clusters, pool=UpstreamPool())
        async with running(gw) as client:
            statuses = [(await client.get("/x")).status_code for _ in range(6)]
        cluster = clusters.cluster("svc")
        assert cluster.outlier is not None
        assert cluster.outlier.config.consecutive_5xx == 1
        ejected = [e["id"] for e in cluster.describe()["endpoints"] if e["ejected"]]
    assert ejected == ["dead"]
    assert statuses.count(200) >= 5  # at most the first pick of the dead one fails


async def test_max_connections_caps_the_connections_to_each_instance() -> None:
    open_now = most = 0

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            while await reader.readuntil(b"\r\n\r\n"):  # keep-alive: later requests
                await asyncio.sleep(0.05)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            open_now -= 1

    async with raw_upstream(counting) as (port, _):
        gw = build(port, {"svc": CallPolicy(max_connections=1)})
        async with running(gw) as client:
            answers = await asyncio.gather(*(client.get(f"/{i}") for i in range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    assert most == 1


async def test_a_swap_without_the_cap_gives_the_pool_its_own_limit_back() -> None:
    gw = build(9, {"svc": CallPolicy(max_connections=3)})
    pool = gw.pool.endpoint(("127.0.0.1", 9))
    gw.swap(GatewayConfig(gw.config.routes, "2", policies={}))
    lifted = pool._limits.max_connections
    gw.swap(
        GatewayConfig(gw.config.routes, "3", policies={"default": CallPolicy(max_connections=2)})
    )
    assert lifted == gw.pool.limits.max_connections
    assert pool._limits.max_connections == 2
