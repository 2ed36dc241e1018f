"""Editing config in the dashboard: validation before anything is stored,
history, rollback and gray release — each checked through the control
plane's own API, not only on the page.

Each test works on a key of its own (seeded in seed.CONFIG), so the tests
do not depend on each other's order.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import httpx
import pytest
from playwright.async_api import expect

from .browser import Dashboard

pytestmark = pytest.mark.integration

POLL_TIMEOUT_S = 10.0


async def history(url: str, path: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(f"{url}/v1/config/{path}/history")
    answer.raise_for_status()
    rows: list[dict[str, object]] = answer.json()
    return rows


async def content(url: str, path: str, *, labels: str | None = None) -> httpx.Response:
    headers = {"X-Crossway-Labels": labels} if labels else {}
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(f"{url}/v1/config/{path}", headers=headers)
    answer.raise_for_status()
    return answer


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Until `check()` holds, for at most POLL_TIMEOUT_S."""
    for _ in range(int(POLL_TIMEOUT_S / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


async def test_invalid_yaml_shows_the_error_inline_and_stores_nothing(
    dashboard: Dashboard,
) -> None:
    path = "prod/checkout/invalid.yaml"
    before = await history(dashboard.base_url, path)
    stored = (await content(dashboard.base_url, path)).text
    dashboard.allow_http_error(400, f"/v1/config/{path}", "PUT")  # the refused save
    await dashboard.open(f"/config/{path}", "config-key")
    await dashboard.replace_editor_text("config-editor", "timeout: 5s\nretries: b: 2\n")
    await dashboard.by_id("config-message").fill("a broken edit")
    await dashboard.by_id("config-save").click()
    error = dashboard.by_id("config-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text(re.compile(r"line\D{0,3}2\b", re.IGNORECASE))
    await expect(dashboard.by_id("config-saved")).to_have_count(0)
    await dashboard.screenshots("config-error")
    assert await history(dashboard.base_url, path) == before
    assert (await content(dashboard.base_url, path)).text == stored


async def test_a_valid_edit_appears_in_history(dashboard: Dashboard) -> None:
    path = "prod/checkout/valid.yaml"
    await dashboard.open(f"/config/{path}", "config-key")
    await expect(dashboard.by_id("history-row-1")).to_be_visible()
    await dashboard.replace_editor_text("config-editor", "replicas: 5\n")
    await dashboard.by_id("config-message").fill("scale out for the sale")
    await dashboard.by_id("config-save").click()
    await expect(dashboard.by_id("config-saved")).to_contain_text("2")
    row = dashboard.by_id("history-row-2")
    await expect(row).to_be_visible()
    await expect(row).to_contain_text("scale out for the sale")
    assert (await content(dashboard.base_url, path)).text.strip() == "replicas: 5"
    newest = (await history(dashboard.base_url, path))[0]
    assert newest["version"] == 2
    assert newest["message"] == "scale out for the sale"


async def test_diff_and_rollback_publish_the_old_content_as_a_new_version(
    dashboard: Dashboard,
) -> None:
    path = "prod/checkout/rollback.yaml"
    await dashboard.open(f"/config/{path}", "config-key")
    await dashboard.by_id("diff-from").select_option("1")
    await dashboard.by_id("diff-to").select_option("2")
    diff = dashboard.by_id("diff-view")
    await expect(diff).to_contain_text("level: info")
    await expect(diff).to_contain_text("level: debug")
    await dashboard.screenshots("config-diff")
    await dashboard.by_id("rollback-1").click()
    await dashboard.by_id("confirm-yes").click()
    await expect(dashboard.by_id("history-row-3")).to_be_visible()
    assert (await content(dashboard.base_url, path)).text == "level: info\n"
    assert [row["version"] for row in await history(dashboard.base_url, path)] == [3, 2, 1]


async def test_gray_release_reaches_only_matching_labels_until_promoted(
    dashboard: Dashboard,
) -> None:
    path = "prod/checkout/gray.yaml"
    url = dashboard.base_url
    await dashboard.open(f"/config/{path}", "config-key")
    await dashboard.replace_editor_text("config-editor", "feature: on\n")
    await dashboard.by_id("beta-selector").fill("zone=eu-1")
    await dashboard.by_id("beta-publish").click()

    async def beta_served() -> bool:
        answer = await content(url, path, labels="zone=eu-1")
        return answer.text.strip() == "feature: on"

    await eventually(beta_served, "the beta served to zone=eu-1")
    beta = await content(url, path, labels="zone=eu-1")
    assert beta.headers.get("X-Crossway-Beta") == "true"
    assert (await content(url, path, labels="zone=us-1")).text == "feature: off\n"
    assert (await content(url, path)).text == "feature: off\n"
    await dashboard.screenshots("config-beta")

    await dashboard.by_id("beta-promote").click()
    confirm = dashboard.by_id("confirm-yes")
    await dashboard.page.wait_for_timeout(300)
    if await confirm.count():
        await confirm.click()

    async def promoted() -> bool:
        return (await content(url, path)).text.strip() == "feature: on"

    await eventually(promoted, "the beta promoted to the release")
    assert (await content(url, path, labels="zone=us-1")).text.strip() == "feature: on"
