from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from crossway.cli.gateway import register
from crossway.proxy.run import GatewaySettings, serve_gateway

pytestmark = pytest.mark.integration

YAML = """\
routes:
  orders:
    match: {path_prefix: /orders}
    backends:
      - {service: orders, weight: 90}
      - {service: orders-canary, weight: 10}
    timeout: 5s
    retries: {attempts: 2}
  ping:
    match: {path: /ping}
    direct_response: {status: 200, body: pong}
"""


@contextlib.asynccontextmanager
async def serving(config: Path) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    settings = GatewaySettings(config_path=config, host="127.0.0.1", port=0, admin_port=0)
    started: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve_gateway(settings, started=started))
    port, admin_port = await asyncio.wait_for(started, 5)
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as proxy,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}") as admin,
        ):
            yield proxy, admin
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_admin_pages_describe_the_running_gateway(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(YAML)
    async with serving(path) as (proxy, admin):
        assert (await proxy.get("/ping")).text == "pong"
        unavailable = await proxy.get("/orders/1")
        assert unavailable.status_code == 503
        assert (await proxy.get("/nope")).status_code == 404
        ready = await admin.get("/ready")
        stats = (await admin.get("/stats")).text
        dump = (await admin.get("/config_dump")).json()
        clusters = (await admin.get("/clusters")).json()
        missing = await admin.get("/missing")
        metrics = (await admin.get("/metrics")).text
    assert ready.status_code == 200
    # The conventional names, as every Crossway process exposes them.
    ping = 'method="GET",route="ping",service="gateway",status_class="2xx"'
    assert f"http_server_requests_total{{{ping}}} 1.0" in metrics
    assert f"http_server_request_duration_seconds_count{{{ping}}} 1.0" in metrics
    assert 'route="unmatched",service="gateway",status_class="4xx"' in metrics
    assert "process_cpu_seconds_total" in metrics
    assert 'crossway_gateway_requests_total{route="ping",class="2xx"} 1' in stats
    assert 'crossway_gateway_requests_total{route="orders",class="5xx"} 1' in stats
    assert 'crossway_gateway_requests_total{route="",class="4xx"} 1' in stats
    assert 'crossway_gateway_request_duration_seconds_count{route="ping"} 1' in stats
    assert "crossway_gateway_active_connections 1" in stats
    assert dump["routes"]["orders"]["backends"][0] == {"service": "orders", "weight": 90}
    assert dump["routes"]["orders"]["timeout"] == "5s"
    assert isinstance(clusters["clusters"], list)
    assert missing.status_code == 404


def test_cli_needs_a_source_of_routes() -> None:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["gateway"])
    assert result.exit_code == 1
    assert "give --control-plane URL or --config FILE" in result.output


def test_cli_reports_a_bad_config_file_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("routes:\n  r:\n    match: {path_prefix: /x}\n    bogus: 1\n")
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["gateway", "--config", str(path)])
    assert result.exit_code == 1
    assert "bogus" in result.output
    assert "Traceback" not in result.output
