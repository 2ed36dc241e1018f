"""Route retries under their budget and the route's overall deadline,
through a real gateway and real upstreams on loopback."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from crossway.core.clock import SystemClock
from crossway.proxy.admin import GatewayStats
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import decode_route
from crossway.proxy.upstream import UpstreamPool

from .test_gateway import endpoint, running
from .upstreams import raw_upstream, uvicorn_upstream

pytestmark = pytest.mark.integration


def build(ports: list[int], route: dict[str, object]) -> Gateway:
    clusters = Clusters(clock=SystemClock())
    clusters.update("svc", [endpoint(p) for p in ports])
    doc = {"match": {"path_prefix": "/"}, "backends": [{"service": "svc"}], **route}
    config = GatewayConfig({"r": decode_route(json.dumps(doc))}, "1")
    return Gateway(config, clusters=clusters, pool=UpstreamPool(), stats=GatewayStats())


async def test_the_budget_stops_a_retry_storm_and_relays_the_last_answer() -> None:
    requests, percent, per_second, ttl = 100, 20.0, 1.0, 10.0
    budget = {"percent": percent, "min_per_second": per_second, "ttl": f"{ttl:g}s"}
    async with uvicorn_upstream() as port:
        gw = build([port], {"retries": {"attempts": 3, "budget": budget}})
        async with running(gw) as client:
            answers = [await client.get("/status?code=503") for _ in range(requests)]
        upstream_calls = gw.pool.endpoint(("127.0.0.1", port)).acquired
    assert {a.status_code for a in answers} == {503}
    assert all("x-crossway-reason" not in a.headers for a in answers)  # the upstream's own
    assert upstream_calls <= requests * (1 + percent / 100) + per_second * ttl
    assert upstream_calls >= requests + per_second * ttl  # the budget did allow some
    assert gw.stats is not None
    refused = gw.stats.budget_refused["svc"]
    assert refused >= requests - (upstream_calls - requests) // 2
    assert gw.stats.retries["r"] == upstream_calls - requests


async def test_without_a_budget_every_attempt_is_made() -> None:
    async with uvicorn_upstream() as port:
        gw = build([port], {"retries": {"attempts": 3, "budget": None}})
        async with running(gw) as client:
            answers = [await client.get("/status?code=503") for _ in range(10)]
        upstream_calls = gw.pool.endpoint(("127.0.0.1", port)).acquired
    assert {a.status_code for a in answers} == {503}
    assert upstream_calls == 30


async def test_concurrent_requests_cannot_count_on_the_same_last_retry() -> None:
    requests, concurrency = 100, 5
    budget = {"percent": 20, "min_per_second": 1, "ttl": "10s"}
    async with uvicorn_upstream() as port:
        gw = build([port], {"retries": {"attempts": 3, "budget": budget}})
        async with running(gw) as client:

            async def batch() -> list[int]:
                return [
                    (await client.get("/status?code=503")).status_code
                    for _ in range(requests // concurrency)
                ]

            results = await asyncio.gather(*(batch() for _ in range(concurrency)))
        upstream_calls = gw.pool.endpoint(("127.0.0.1", port)).acquired
    assert [s for r in results for s in r] == [503] * requests
    assert upstream_calls <= requests * 1.2 + 10


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(5)  # never answers within the test's deadlines


async def test_the_route_timeout_bounds_all_attempts_together() -> None:
    async with raw_upstream(_silent) as (port, seen):
        gw = build(
            [port],
            {"timeout": "300ms", "retries": {"attempts": 3, "per_try_timeout": "200ms"}},
        )
        async with running(gw) as client:
            started = time.monotonic()
            answer = await client.get("/slow")
            elapsed = time.monotonic() - started
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "upstream_timeout"
    assert 0.28 <= elapsed < 0.6  # 200 ms, then the 100 ms left; not 3 x 200 ms
    assert len(seen) == 2  # the per-try timeout was retried once, within the deadline


async def test_without_a_per_try_timeout_one_attempt_has_the_whole_deadline() -> None:
    async with raw_upstream(_silent) as (port, seen):
        gw = build([port], {"timeout": "250ms", "retries": {"attempts": 3}})
        async with running(gw) as client:
            started = time.monotonic()
            answer = await client.get("/slow")
            elapsed = time.monotonic() - started
    assert answer.status_code == 504
    assert 0.23 <= elapsed < 0.5
    assert len(seen) == 1
