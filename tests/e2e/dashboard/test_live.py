"""The dashboard updates itself: data changed through the API appears on an
open page without a reload, and the theme toggle switches to dark."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import expect

from .browser import Dashboard

pytestmark = pytest.mark.integration

LIVE_TIMEOUT_MS = 15_000
COLOURS = """[document.documentElement, document.body]
    .map(e => getComputedStyle(e)).map(s => s.backgroundColor + " " + s.color).join(" ")"""


async def test_a_new_service_appears_on_the_open_overview_without_reload(
    dashboard: Dashboard,
) -> None:
    await dashboard.open("/", "overview")
    # A reload would drop this marker; the row must arrive with it still set.
    await dashboard.page.evaluate("window.__notReloaded = true")
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.put(
            f"{dashboard.base_url}/v1/services/newcomer/instances/newcomer-1",
            json={"address": "127.0.0.1", "port": 9100, "zone": "eu-1", "ttl": "24h"},
        )
    assert answer.status_code == 200, answer.text
    row = dashboard.by_id("service-row-newcomer")
    await expect(row).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    assert await dashboard.page.evaluate("window.__notReloaded === true")


async def test_theme_toggle_switches_to_dark_and_back(dashboard: Dashboard) -> None:
    await dashboard.open("/", "overview")
    assert await dashboard.theme() == "light"  # the browser asks for light
    light = await dashboard.page.evaluate(COLOURS)
    await dashboard.set_theme("dark")
    dark = await dashboard.page.evaluate(COLOURS)
    assert dark != light
    await dashboard.set_theme("light")
