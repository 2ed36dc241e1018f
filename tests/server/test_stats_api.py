"""Golden signals and alerts over HTTP: push, stats, edges, rules, and a firing webhook."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette

from crossway.core.clock import VirtualClock
from crossway.server.api import stats
from crossway.server.app import ROUTE_PROVIDERS, create_app
from crossway.server.context import ServerContext
from crossway.server.settings import ServerSettings
from crossway.store.local import LocalStore
from crossway.telemetry.alerts import AlertLoop
from crossway.telemetry.alerts.rules import RuleError
from crossway.telemetry.signals import BUCKET_COUNT, Aggregator, Histogram
from crossway.testing.services import require

from .helpers import live_server

RULES = """\
rules:
  - name: orders-success
    expr: success_rate{service="orders"} < 0.99 for 30s
    severity: page
    annotations: {summary: "orders success at {{ $value }}"}
notifiers:
  - name: ops
    webhook: http://127.0.0.1:9/hook
    repeat_interval: 1h
"""


def series(
    service: str = "orders",
    *,
    ok: int = 10,
    failed: int = 0,
    route: str = "/orders/{id}",
    method: str = "GET",
    caller: str | None = None,
) -> list[dict[str, Any]]:
    out = []
    for count, klass, latency in ((ok, "2xx", 0.02), (failed, "5xx", 0.4)):
        if count:
            h = Histogram.of([latency] * count)
            cell: dict[str, Any] = {
                "service": service,
                "route": route,
                "method": method,
                "status_class": klass,
                "count": count,
                "errors": count if klass == "5xx" else 0,
                "sum": h.sum,
                "buckets": h.counts,
            }
            if caller:
                cell["caller"] = caller
            out.append(cell)
    return out


def push_body(*cells: dict[str, Any], side: str = "server") -> dict[str, Any]:
    return {"source": {"service": "orders", "instance": "o-1"}, "side": side, "series": list(cells)}


def with_stats(ctx: ServerContext) -> Starlette:
    """The control plane's app with the stats routes (once, whether or not
    they are among the built-in providers yet)."""
    extra = [] if stats.routes in ROUTE_PROVIDERS else [stats.routes]
    return create_app(ctx, extra=extra)


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock(5.0)


@pytest.fixture
def sctx(store: LocalStore, vclock: VirtualClock) -> ServerContext:
    return ServerContext(store=store, settings=ServerSettings(store="memory"), clock=vclock)


@pytest.fixture
async def api(sctx: ServerContext) -> AsyncIterator[httpx2.AsyncClient]:
    app = with_stats(sctx)
    await sctx.start()
    transport = httpx2.ASGITransport(app=app)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c
    finally:
        await sctx.close()


async def test_pushed_signals_are_served_per_service_route_and_edge(
    api: httpx2.AsyncClient, vclock: VirtualClock
) -> None:
    body = push_body(*series(ok=90, failed=10, caller="checkout"), *series(route="/x", ok=20))
    r = await api.post("/v1/stats/push", json=body)
    assert r.status_code == 202
    assert r.json() == {"accepted": 3, "overflowed": 0}
    vclock.advance(10)
    listing = (await api.get("/v1/stats")).json()
    assert (listing["window"], listing["window_s"], listing["resolution_s"]) == ("1m", 60, 10)
    [row] = listing["rows"]
    assert row["service"] == "orders"
    assert row["requests"] == 120
    assert row["success_rate"] == pytest.approx(110 / 120, abs=1e-6)
    assert row["rps"] == pytest.approx(2.0)
    assert 15 <= row["p50_ms"] <= 25
    assert row["p99_ms"] > 250
    routes = (await api.get("/v1/stats", params={"service": "orders"})).json()
    assert routes["kind"] == "route"
    assert [r["route"] for r in routes["rows"]] == ["/orders/{id}", "/x"]
    assert routes["total"]["requests"] == 120
    one = (await api.get("/v1/stats", params={"route": "/x", "window": "10s"})).json()
    assert [(r["service"], r["requests"], r["rps"]) for r in one["rows"]] == [("orders", 20, 2.0)]
    edges = (await api.get("/v1/edges")).json()
    assert [(e["caller"], e["service"], e["requests"]) for e in edges["rows"]] == [
        ("checkout", "orders", 100)
    ]
    charted = (await api.get("/v1/stats", params={"window": "5m", "series": "true"})).json()
    points = charted["rows"][0]["series"]
    assert len(points) == 30
    assert sum(p["requests"] for p in points) == 120
    day = (await api.get("/v1/stats", params={"window": "24h"})).json()
    assert (day["resolution_s"], day["rows"]) == (60, [])  # its minute is not over yet
    vclock.advance(60)
    day = (await api.get("/v1/stats", params={"window": "24h"})).json()
    assert day["rows"][0]["requests"] == 120
    assert day["rows"][0]["rps"] == pytest.approx(120 / 86400, rel=1e-5)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"window": "forever"}, "window"),
        ({"window": "1s"}, "window"),
        ({"series": "maybe"}, "series"),
    ],
)
async def test_bad_queries_name_the_parameter(
    api: httpx2.AsyncClient, params: dict[str, str], field: str
) -> None:
    r = await api.get("/v1/stats", params=params)
    assert r.status_code == 400
    assert r.json()["error"]["field"] == field


async def test_bad_pushes_are_refused_naming_the_field(api: httpx2.AsyncClient) -> None:
    cell = series(ok=3)[0]
    cell["errors"] = 5
    r = await api.post("/v1/stats/push", json=push_body(cell))
    assert r.status_code == 400
    assert r.json()["error"]["field"] == "$.series[0].errors"
    cell = series(ok=3)[0]
    cell["buckets"] = [0] * (BUCKET_COUNT - 1)
    r = await api.post("/v1/stats/push", json=push_body(cell))
    assert r.json()["error"]["field"] == "$.series[0].buckets"
    r = await api.post("/v1/stats/push", json={"source": {"service": "a"}, "series": [], "x": 1})
    assert (r.status_code, r.json()["error"]["field"]) == (400, "$.x")
    r = await api.post("/v1/stats/push", content=b"{not json")
    assert r.json()["error"]["code"] == "malformed_json"
    r = await api.post(
        "/v1/stats/push", json={"source": {"service": "a"}, "series": [], "side": "up"}
    )
    assert r.json()["error"]["field"] == "$.side"


async def test_rules_are_validated_stored_and_reverted(
    api: httpx2.AsyncClient, sctx: ServerContext
) -> None:
    assert (await api.get("/v1/alerts/rules")).json()["origin"] == "none"
    bad = RULES.replace("0.99 for 30s", "0.99 for ever")
    r = await api.put("/v1/alerts/rules", content=bad)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_rules"
    assert r.json()["error"]["message"].startswith("request body:3:11: rules[0].expr")
    assert r.json()["error"]["line"] == 3
    assert await sctx.store.get(stats.RULES_KEY) is None
    r = await api.put("/v1/alerts/rules", content=RULES)
    assert r.status_code == 200
    shown = r.json()
    assert shown["origin"] == "store"
    assert shown["rules"][0] == {
        "name": "orders-success",
        "expr": 'success_rate{service="orders"} < 0.99 for 30s',
        "for": "30s",
        "window": "1m",
        "severity": "page",
        "labels": {},
        "annotations": {"summary": "orders success at {{ $value }}"},
        "notify": ["ops"],
    }
    stored = await sctx.store.get(stats.RULES_KEY)
    assert stored is not None
    assert stored.value.decode() == RULES
    r = await api.get("/v1/alerts/rules")
    assert r.json()["yaml"] == RULES
    assert int(r.headers["x-crossway-index"]) == stored.mod_revision
    r = await api.delete("/v1/alerts/rules")
    assert (r.json()["origin"], r.json()["rules"]) == ("none", [])
    alerts = (await api.get("/v1/alerts")).json()
    assert (alerts["active"], alerts["rules"]) == ([], 0)


async def test_rules_written_by_another_control_plane_are_followed(
    api: httpx2.AsyncClient, sctx: ServerContext
) -> None:
    await sctx.store.put(stats.RULES_KEY, RULES.encode())
    loop = sctx.service(AlertLoop)
    async with asyncio.timeout(5):
        while not loop.engine.rules.rules:
            await asyncio.sleep(0.01)
    assert (await api.get("/v1/alerts/rules")).json()["origin"] == "store"
    await sctx.store.put(stats.RULES_KEY, b"rules: [")  # a broken writer: the rules stay
    await sctx.store.delete(stats.RULES_KEY)
    async with asyncio.timeout(5):
        while loop.engine.rules.rules:
            await asyncio.sleep(0.01)


async def test_a_rule_file_from_the_environment_is_loaded_at_start(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(RULES)
    monkeypatch.setenv(stats.RULES_ENV, str(path))
    ctx = ServerContext(store=store, settings=ServerSettings(store="memory"))
    app = with_stats(ctx)
    await ctx.start()
    try:
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://t"
        ) as c:
            shown = (await c.get("/v1/alerts/rules")).json()
        assert (shown["origin"], shown["source"]) == ("file", str(path))
    finally:
        await ctx.close()


async def test_an_invalid_rule_file_fails_the_start(
    store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("rules:\n  - name: x\n    expr: nope > 1\n")
    monkeypatch.setenv(stats.RULES_ENV, str(path))
    ctx = ServerContext(store=store, settings=ServerSettings(store="memory"))
    with_stats(ctx)
    with pytest.raises(RuleError, match=r"alerts.yaml:3:11: rules\[0\].expr"):
        await ctx.start()
    await ctx.close()


@pytest.mark.parametrize(
    ("name", "value"), [(stats.INTERVAL_ENV, "soon"), (stats.MAX_KEYS_ENV, "-3")]
)
def test_bad_settings_in_the_environment_are_refused(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    ctx = ServerContext(store=store, settings=ServerSettings(store="memory"))
    with pytest.raises(Exception, match=name):
        with_stats(ctx)


async def test_metrics_expose_instances_per_service_and_pass_promtool(
    api: httpx2.AsyncClient, sctx: ServerContext
) -> None:
    registration = {"address": "127.0.0.1", "port": 8080, "ttl": "30s"}
    for i in range(2):
        r = await api.put(f"/v1/services/orders/instances/o-{i}", json=registration)
        assert r.status_code == 200
    await api.post("/v1/stats/push", json=push_body(*series(ok=5)))
    text = (await api.get("/metrics")).text
    assert 'crossway_service_instances{service="orders",status="passing"} 2.0' in text
    assert "crossway_stats_pushes_total 1.0" in text
    assert 'crossway_alerts{state="firing"} 0.0' in text
    assert isinstance(sctx.service(Aggregator), Aggregator)
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (run scripts/ensure-prometheus)")
    assert promtool is not None
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr


# The alert must fire to a real webhook receiver and resolve.


class WebhookReceiver:
    """A minimal HTTP/1.1 server on loopback that records JSON bodies."""

    def __init__(self) -> None:
        self.bodies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                await self.bodies.put(json.loads(body))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[WebhookReceiver, str]]:
    receiver = WebhookReceiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield receiver, f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()
        await server.wait_closed()


async def test_an_alert_fires_to_a_webhook_and_resolves(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(stats.INTERVAL_ENV, "20ms")  # the loop evaluates on its own, quickly
    clock = VirtualClock(5.0)  # virtual time drives windows and `for`
    ctx = ServerContext(store=store, settings=ServerSettings(store="memory"), clock=clock)
    app = with_stats(ctx)
    async with webhook_receiver() as (receiver, hook), live_server(app) as url:
        await ctx.start()
        try:
            async with httpx2.AsyncClient(base_url=url) as c:
                r = await c.put(
                    "/v1/alerts/rules", content=RULES.replace("http://127.0.0.1:9/hook", hook)
                )
                assert r.status_code == 200

                async def feed(ok: int, failed: int, seconds: int) -> None:
                    for _ in range(seconds // 10):
                        body = push_body(*series(ok=ok, failed=failed))
                        assert (await c.post("/v1/stats/push", json=body)).status_code == 202
                        clock.advance(10)
                        await asyncio.sleep(0.05)  # let the loop evaluate at this moment

                await feed(100, 0, 60)  # healthy: nothing happens
                assert receiver.bodies.empty()
                await feed(80, 20, 60)  # success rate drops to 80 %
                firing = await asyncio.wait_for(receiver.bodies.get(), 5)
                assert firing["status"] == "firing"
                [alert] = firing["alerts"]
                assert alert["labels"]["alertname"] == "orders-success"
                assert alert["labels"]["service"] == "orders"
                assert alert["labels"]["severity"] == "page"
                assert alert["value"] < 0.99
                assert alert["annotations"]["summary"] == f"orders success at {alert['valueText']}"
                active = (await c.get("/v1/alerts")).json()["active"]
                assert [a["state"] for a in active] == ["firing"]
                await feed(100, 0, 80)  # recovered: the window holds only good minutes
                resolved = await asyncio.wait_for(receiver.bodies.get(), 5)
                assert resolved["status"] == "resolved"
                assert resolved["alerts"][0]["fingerprint"] == alert["fingerprint"]
                assert receiver.bodies.empty()  # deduplicated: one firing, one resolved
                history = (await c.get("/v1/alerts")).json()
                assert [h["state"] for h in history["history"]] == ["resolved", "firing"]
                assert history["notifications"]["sent"] == 2
        finally:
            await ctx.close()
