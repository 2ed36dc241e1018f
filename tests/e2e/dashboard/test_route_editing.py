"""Editing a route document in the dashboard: the server's validation error
is shown inline and nothing is stored; a valid edit is stored."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from playwright.async_api import expect

from .browser import Dashboard

pytestmark = pytest.mark.integration

ROUTE = "edit-me"


async def stored_route(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        answer = await client.get(f"{url}/v1/routes/{ROUTE}")
    answer.raise_for_status()
    route: dict[str, Any] = answer.json()
    return route


async def test_route_edit_is_validated_by_the_server_then_stored(dashboard: Dashboard) -> None:
    before = await stored_route(dashboard.base_url)
    dashboard.allow_http_error(400, f"/v1/routes/{ROUTE}", "PUT")  # the refused save
    await dashboard.open(f"/routes/{ROUTE}", "route")
    invalid = {"match": {"path_prefix": "/edit-me"}, "backends": [{"service": "web", "weight": -1}]}
    await dashboard.replace_editor_text("route-editor", json.dumps(invalid, indent=2))
    await dashboard.by_id("route-save").click()
    error = dashboard.by_id("route-error")
    await expect(error).to_contain_text("backends[0].weight")
    assert await stored_route(dashboard.base_url) == before

    valid = {
        "match": {"path_prefix": "/edit-me"},
        "backends": [{"service": "web"}],
        "timeout": "4s",
    }
    await dashboard.replace_editor_text("route-editor", json.dumps(valid, indent=2))
    await dashboard.by_id("route-save").click()
    await expect(dashboard.by_id("route-saved")).to_be_visible()
    assert (await stored_route(dashboard.base_url))["timeout"] == "4s"
