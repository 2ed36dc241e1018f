"""Route rate limits through real gateways: local ones keyed by client
address and by header, and a global one shared by two gateways on the real
Redis (skipped locally without one, required in CI)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
import typer
from typer.testing import CliRunner

from crossway.cli.gateway import register
from crossway.core.clock import SystemClock
from crossway.proxy.admin import GatewayStats, render_stats
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.ratelimit import REDIS_PREFIX
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import decode_route
from crossway.proxy.upstream import UpstreamPool
from crossway.resilience.redis_limiter import AsyncScriptingClient
from crossway.resilience.resp import AsyncRespClient
from crossway.testing.services import free_port

from .test_gateway import endpoint, running
from .upstreams import uvicorn_upstream

pytestmark = pytest.mark.integration


def build(
    upstream: int,
    limit: dict[str, object],
    *,
    name: str = "limited",
    redis: AsyncScriptingClient | None = None,
) -> Gateway:
    clusters = Clusters(clock=SystemClock())
    clusters.update("svc", [endpoint(upstream)])
    route = {"match": {"path_prefix": "/"}, "backends": [{"service": "svc"}], "rate_limit": limit}
    config = GatewayConfig({name: decode_route(json.dumps(route))}, "1")
    return Gateway(
        config, clusters=clusters, pool=UpstreamPool(), stats=GatewayStats(), redis=redis
    )


async def test_a_local_limit_by_client_ip_answers_429_with_retry_after() -> None:
    async with uvicorn_upstream() as port:
        gw = build(port, {"rate": "1/m", "burst": 3})
        async with running(gw) as client:
            statuses = [(await client.get(f"/{i}")).status_code for i in range(5)]
            refused = await client.get("/again")
            assert gw.pool.endpoint(("127.0.0.1", port)).acquired == 3  # refusals cost nothing
    assert statuses == [200, 200, 200, 429, 429]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert gw.stats is not None
    assert 'crossway_gateway_rate_limited_total{route="limited"} 3' in render_stats(gw.stats, gw, 0)


async def test_a_local_limit_by_header_gives_each_value_its_budget() -> None:
    async with uvicorn_upstream() as port:
        gw = build(port, {"rate": "1/m", "burst": 2, "key": "header:X-Api-Key"})
        async with running(gw) as client:

            async def calls(key: str, n: int) -> list[int]:
                return [
                    (await client.get("/", headers={"x-api-key": key})).status_code
                    for _ in range(n)
                ]

            first, second = await calls("alpha", 3), await calls("beta", 2)
    assert first == [200, 200, 429]
    assert second == [200, 200]


async def test_a_global_limit_on_redis_is_shared_by_two_gateways(redis_url: str) -> None:
    route_name = f"shared-{uuid.uuid4().hex[:12]}"
    # One gateway on redis-py, one on the lean client the `gateway` command uses.
    clients: list[aioredis.Redis[bytes] | AsyncRespClient] = [
        aioredis.Redis.from_url(redis_url),
        AsyncRespClient.from_url(redis_url),
    ]
    limit = {"rate": "1/m", "burst": 5, "key": "route", "scope": "global"}
    try:
        async with uvicorn_upstream() as port:
            one = build(port, limit, name=route_name, redis=clients[0])
            two = build(port, limit, name=route_name, redis=clients[1])
            async with running(one) as first, running(two) as second:
                answers = await asyncio.gather(
                    *(c.get(f"/{i}") for i in range(10) for c in (first, second))
                )
    finally:
        admin = aioredis.Redis.from_url(redis_url)
        keys = [k async for k in admin.scan_iter(match=f"{REDIS_PREFIX}{route_name}:*")]
        if keys:
            await admin.delete(*keys)
        for client in (*clients, admin):
            await client.aclose()  # type: ignore[union-attr]
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 5 + [429] * 15


@pytest.mark.parametrize("lean", [False, True], ids=["redis-py", "lean-client"])
async def test_a_global_limit_fails_open_when_redis_is_unreachable(lean: bool) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    dead: aioredis.Redis[bytes] | AsyncRespClient = (
        AsyncRespClient.from_url(url, socket_timeout=0.2, connect_timeout=0.2)
        if lean
        else aioredis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.2)
    )
    try:
        async with uvicorn_upstream() as port:
            gw = build(port, {"rate": "1/m", "burst": 1, "scope": "global"}, redis=dead)
            async with running(gw) as client:
                statuses = [(await client.get(f"/{i}")).status_code for i in range(3)]
    finally:
        await dead.aclose()  # type: ignore[union-attr]
    assert statuses == [200, 200, 200]
    assert gw.stats is not None
    assert gw.stats.rate_limit_unavailable["limited"] == 3


GATEWAY_SCRIPT = """
import sys
from pathlib import Path
from crossway.proxy.run import GatewaySettings, run_gateway
run_gateway(GatewaySettings(config_path=Path(sys.argv[1]), host="127.0.0.1",
    port=int(sys.argv[2]), admin_port=int(sys.argv[3]), redis_url=sys.argv[4]))
"""


def test_the_gateway_process_limits_globally_on_redis(tmp_path: Path, redis_url: str) -> None:
    # The gateway as `crossway gateway` runs it: on uvloop, with its own Redis client.
    route_name = f"proc-{uuid.uuid4().hex[:12]}"
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "routes:\n"
        f"  {route_name}:\n"
        "    match: {path: /ping}\n"
        "    direct_response: {status: 200, body: pong}\n"
        "    rate_limit: {rate: 1/m, burst: 3, key: route, scope: global}\n"
    )
    port, admin = free_port(), free_port()
    argv = [sys.executable, "-c", GATEWAY_SCRIPT, str(config), str(port), str(admin), redis_url]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway never became ready"
            time.sleep(0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            statuses = [client.get("/ping").status_code for _ in range(5)]
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=10)[0].decode(errors="replace")
        cleanup = redis.Redis.from_url(redis_url)
        keys = list(cleanup.scan_iter(match=f"{REDIS_PREFIX}{route_name}:*"))
        if keys:
            cleanup.delete(*keys)
        cleanup.close()
    assert statuses == [200, 200, 200, 429, 429], output
    assert "Traceback" not in output, output


def test_a_global_limit_without_redis_is_a_config_error_naming_the_route(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "routes:\n"
        "  api:\n"
        "    match: {path_prefix: /api}\n"
        "    backends: [{service: api}]\n"
        "    rate_limit: {rate: 100/s, scope: global}\n"
    )
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["gateway", "--config", str(path), "--port", "0"])
    assert result.exit_code == 1
    assert "route api: rate_limit.scope global needs a Redis" in result.output
    assert "Traceback" not in result.output
