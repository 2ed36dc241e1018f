"""A control plane that requires a bearer token: the dashboard asks for it
once, keeps it, and sends it with every API call, live streams included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from crossway.testing.server import CrosswayServer, start_server
from crossway.testing.services import require

from .browser import open_dashboard

pytestmark = pytest.mark.integration

TOKEN = "e2e-dashboard-token"
LIVE_TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def guarded() -> Iterator[CrosswayServer]:
    server = start_server(store="memory", env={"CROSSWAY_TOKEN": TOKEN})
    try:
        yield server
    finally:
        server.stop()


async def register(server: CrosswayServer, service: str) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.put(
            f"{server.url}/v1/services/{service}/instances/{service}-1",
            json={"address": "127.0.0.1", "port": 9200, "zone": "eu-1", "ttl": "24h"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert answer.status_code == 200, answer.text


async def test_the_dashboard_asks_for_the_token_once_and_sends_it(
    chromium: None, guarded: CrosswayServer, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        shell = await client.get(guarded.url + "/")
    require(shell.status_code == 200, f"the dashboard is not served: {shell.text[:200]}")
    await register(guarded, "guarded")
    async with open_dashboard(guarded.url, tmp_path / "profile") as board:
        board.allow_http_error(401, "/v1/")  # the calls made before the token is given
        await board.page.goto(guarded.url + "/")
        await expect(board.by_id("token-form")).to_be_visible()
        await board.by_id("token-input").fill(TOKEN)
        await board.by_id("token-save").click()
        board.problems.allowed = [a for a in board.problems.allowed if a.status != 401]
        await board.loaded("overview")
        await expect(board.by_id("service-row-guarded")).to_be_visible()
        await register(guarded, "guarded-later")  # later changes come with the token too
        await expect(board.by_id("service-row-guarded-later")).to_be_visible(
            timeout=LIVE_TIMEOUT_MS
        )
        await board.page.reload()
        await board.loaded("overview")
        await expect(board.by_id("token-form")).to_have_count(0)
    board.assert_clean()
