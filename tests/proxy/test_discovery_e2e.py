"""The gateway takes its endpoints from the control plane's discovery."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx
import pytest

from crossway.proxy.run import GatewaySettings, serve_gateway
from crossway.testing.server import CrosswayServer, shared_server

from .upstreams import uvicorn_upstream

pytestmark = pytest.mark.integration

YAML = """\
routes:
  gw-e2e:
    match: {path_prefix: /gw-e2e}
    backends: [{service: gw-e2e-svc}]
    timeout: 2s
"""


@pytest.fixture(scope="module")
def control() -> CrosswayServer:
    return shared_server("memory")


async def until(check: httpx.AsyncClient, path: str, status: int) -> httpx.Response:
    for _ in range(200):
        response = await check.get(path)
        if response.status_code == status:
            return response
        await asyncio.sleep(0.025)
    raise AssertionError(f"{path} never answered {status}: {response.text}")


async def test_endpoints_follow_registrations(control: CrosswayServer, tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(YAML)
    settings = GatewaySettings(
        control_plane=control.url, config_path=config, host="127.0.0.1", port=0, admin_port=0
    )
    started: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(serve_gateway(settings, started=started))
    port, _ = await asyncio.wait_for(started, 10)
    instance = f"{control.url}/v1/services/gw-e2e-svc/instances/i1"
    try:
        async with (
            uvicorn_upstream() as up,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as proxy,
            httpx.AsyncClient() as cp,
        ):
            assert (await proxy.get("/gw-e2e/x")).status_code == 503
            registered = await cp.put(instance, json={"address": "127.0.0.1", "port": up})
            assert registered.status_code == 200
            answer = await until(proxy, "/gw-e2e/x", 200)
            assert answer.text == "hello /gw-e2e/x"
            await cp.delete(instance)
            await until(proxy, "/gw-e2e/x", 503)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
