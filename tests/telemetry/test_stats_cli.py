"""`crossway stat|top|edges|alerts|export` against a real control plane on loopback.

The server runs in a thread on a virtual clock the tests move, so a pushed
10 s slot is complete at once and alert `for` durations pass instantly.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import msgspec
import pytest
import typer
import uvicorn
import yaml
from starlette.applications import Starlette
from typer.testing import CliRunner, Result

from crossway.cli import stats as cli
from crossway.core.clock import VirtualClock
from crossway.server.api import stats as stats_api
from crossway.server.app import ROUTE_PROVIDERS, create_app
from crossway.server.context import ServerContext
from crossway.server.settings import ServerSettings
from crossway.store.memory import open_memory_store
from crossway.telemetry.signals import Recorder
from crossway.testing.services import free_port, port_open, require

CLOCK = VirtualClock(5.0)

RULES = """\
rules:
  - name: orders-success
    expr: success_rate{service="orders"} < 0.99
    severity: page
notifiers:
  - {name: ops, webhook: "http://127.0.0.1:9/hook"}
"""


def with_stats(ctx: ServerContext) -> Starlette:
    """The control plane's app with the stats routes (once, whether or not
    they are among the built-in providers yet)."""
    extra = [] if stats_api.routes in ROUTE_PROVIDERS else [stats_api.routes]
    return create_app(ctx, extra=extra)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    port = free_port()
    servers: list[uvicorn.Server] = []
    os.environ[stats_api.INTERVAL_ENV] = "20ms"

    async def serve() -> None:
        ctx = ServerContext(
            store=open_memory_store(), settings=ServerSettings(store="memory"), clock=CLOCK
        )
        app = with_stats(ctx)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        servers.append(uvicorn.Server(config))
        await servers[0].serve()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    del os.environ[stats_api.INTERVAL_ENV]
    url = f"http://127.0.0.1:{port}"
    push_traffic(url)
    yield url
    servers[0].should_exit = True
    thread.join(10)


def push_traffic(url: str) -> None:
    """orders: 90 % success on two routes, called by checkout; books: all good."""
    orders = Recorder("orders", instance="o-1")
    for i in range(100):
        orders.record("/orders/{id}", "GET", 500 if i % 10 == 0 else 200, 0.03, caller="checkout")
    for _ in range(20):
        orders.record("/orders", "POST", 201, 0.2)
    books = Recorder("books")
    for _ in range(40):
        books.record("/books", "GET", 200, 0.005)
    for recorder in (orders, books):
        push = recorder.snapshot()
        assert push is not None
        body = msgspec.json.encode(push)
        headers = {"content-type": "application/json"}
        assert httpx2.post(f"{url}/v1/stats/push", content=body, headers=headers).status_code == 202
    CLOCK.advance(10)


Invoke = Callable[..., Result]


@pytest.fixture
def run(server_url: str, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.setenv("CROSSWAY_URL", server_url)
    monkeypatch.delenv("CROSSWAY_TOKEN", raising=False)
    app = typer.Typer()
    cli.register(app)
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True) -> Result:
        result = runner.invoke(app, list(args), terminal_width=200)
        if ok:
            assert result.exit_code == 0, (result.output, result.stderr)
        return result

    return invoke


def lines(result: Result) -> list[list[str]]:
    return [line.split() for line in result.stdout.splitlines() if line.strip()]


def test_stat_prints_one_row_per_service(run: Invoke) -> None:
    table = lines(run("stat"))
    assert table[0] == ["NAME", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]
    rows = {row[0]: row for row in table[1:]}
    assert rows["orders"][1:3] == ["91.67%", "2.00rps"]  # 110 of 120 succeeded, 120 in 60 s
    assert rows["books"][1:3] == ["100.00%", "0.67rps"]
    assert rows["books"][3].endswith("ms")


def test_stat_of_one_service_lists_routes_and_total(run: Invoke) -> None:
    table = lines(run("stat", "service/orders"))
    assert table[0][:2] == ["NAME", "ROUTE"]
    routes = [" ".join(row[1:3]) for row in table[1:]]
    assert routes == ["POST /orders", "GET /orders/{id}", "(total) 91.67%"]
    assert lines(run("stat", "orders"))[1:] == table[1:]
    only = lines(run("stat", "orders", "--route", "/orders"))
    assert [row[2] for row in only[1:-1]] == ["/orders"]


def test_stat_json_and_errors(run: Invoke) -> None:
    body = json.loads(run("stat", "--json", "-w", "5m").stdout)
    assert body["window_s"] == 300
    assert {r["service"] for r in body["rows"]} == {"orders", "books"}
    assert "no requests for ghost" in run("stat", "ghost").stdout
    bad = run("stat", "pods/x", ok=False)
    assert bad.exit_code == 1
    assert "expected service, service/NAME or NAME" in bad.stderr
    wrong = run("stat", "-w", "48h", ok=False)
    assert "window must be between 10s and 24h" in wrong.stderr


def test_top_once_lists_the_busiest_routes_first(run: Invoke) -> None:
    table = lines(run("top", "--once", "--window", "1m"))
    header = next(i for i, row in enumerate(table) if row[:2] == ["SERVICE", "ROUTE"])
    first = table[header + 1]
    assert first[:3] == ["orders", "GET", "/orders/{id}"]
    assert len(table) - header - 1 == 3
    assert len(lines(run("top", "--once", "-w", "1m", "--limit", "1"))) == header + 2


def test_edges(run: Invoke) -> None:
    table = lines(run("edges"))
    assert table[0][:2] == ["CALLER", "CALLEE"]
    assert table[1][:3] == ["checkout", "orders", "90.00%"]
    assert json.loads(run("edges", "--json", "--caller", "nobody").stdout)["rows"] == []


def test_alert_rules_check_apply_fire_and_reset(run: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text(RULES)
    assert "1 rules, 1 notifiers, valid" in run("alerts", "check", str(path)).stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text(RULES.replace("< 0.99", "< lots"))
    failed = run("alerts", "check", str(broken), ok=False)
    assert failed.exit_code == 1
    assert f"{broken}:3:11: rules[0].expr" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert "applied 1 rules" in run("alerts", "apply", str(path)).stdout
    table = lines(run("alerts", "rules"))
    assert table[1][0] == "orders-success"
    deadline = time.monotonic() + 10
    while "firing" not in run("alerts").stdout and time.monotonic() < deadline:
        time.sleep(0.05)
    listing = lines(run("alerts", "--history"))
    assert listing[1][:3] == ["orders-success", "firing", "page"]
    assert "service=orders" in listing[1][3]
    assert any(row[:1] == ["TIME"] for row in listing)
    assert "0 rules in force (none)" in run("alerts", "reset").stdout


def test_export_prometheus_rules_and_dashboard(run: Invoke, tmp_path: Path) -> None:
    rules = tmp_path / "alerts.yaml"
    rules.write_text(RULES)
    out = tmp_path / "crossway.rules.yml"
    result = run("export", "prometheus-rules", "--rules", str(rules), "-o", str(out))
    assert f"wrote {out}" in result.stderr
    groups = yaml.safe_load(out.read_text())["groups"]
    assert [g["name"] for g in groups] == ["crossway-golden-signals", "crossway-alerts"]
    plain = yaml.safe_load(run("export", "prometheus-rules").stdout)
    assert len(plain["groups"]) == 1
    dashboard = json.loads(run("export", "grafana-dashboard").stdout)
    assert dashboard["title"] == "Crossway golden signals"
    assert len(dashboard["panels"]) == 6
    both = run("export", "prometheus-rules", "--rules", str(rules), "--from-server", ok=False)
    assert "not both" in both.stderr
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (run scripts/ensure-prometheus)")
    assert promtool is not None
    check = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout


def test_an_unreachable_control_plane_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSWAY_URL", f"http://127.0.0.1:{free_port()}")
    app = typer.Typer()
    cli.register(app)
    for args in (["stat"], ["edges"], ["alerts"], ["top", "--once"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1
        assert "cannot reach the control plane" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
