"""A canary weight change made with the dashboard's sliders reaches the gateway.

The seeded route `orders` splits /orders 90/10 between the services `orders`
and `orders-canary`, each a real server answering its own name behind a real
`crossway gateway --control-plane`. The test moves the sliders to 50/50,
applies, and counts who answers 200 requests through the gateway.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
from playwright.async_api import Locator, expect

from .browser import Dashboard
from .conftest import Gateway

pytestmark = pytest.mark.integration

REQUESTS = 200
SETTLE_TIMEOUT_S = 10.0


async def drag_to(slider: Locator, value: int) -> None:
    """Move a range input to `value` the way a keyboard user does (Home, then
    arrow steps of 1), so the page's own input handlers see every change."""
    await slider.focus()
    await slider.press("Home")
    for _ in range(value):
        await slider.press("ArrowRight")
    await expect(slider).to_have_value(str(value))


def weights_of(route: dict[str, object]) -> dict[str, int]:
    backends = route["backends"]
    assert isinstance(backends, list)
    return {b["service"]: b.get("weight", 1) for b in backends}


async def gateway_weights(client: httpx.AsyncClient, gateway: Gateway) -> dict[str, int]:
    """The weights of `orders` in the gateway's routes in force."""
    dump = (await client.get(f"{gateway.admin_url}/config_dump")).json()
    return weights_of(dump["routes"]["orders"])


async def test_canary_slider_change_reaches_the_gateway(
    dashboard: Dashboard, gateway: Gateway
) -> None:
    await dashboard.open("/routes/orders", "route")
    first, second = dashboard.by_id("canary-slider-0"), dashboard.by_id("canary-slider-1")
    await expect(first).to_have_value("90")
    await expect(second).to_have_value("10")
    await drag_to(first, 50)
    await drag_to(second, 50)
    await expect(first).to_have_value("50")
    await dashboard.by_id("canary-apply").click()
    await expect(dashboard.by_id("route-saved")).to_be_visible()

    async with httpx.AsyncClient(timeout=5) as client:
        stored = (await client.get(f"{dashboard.base_url}/v1/routes/orders")).json()
        assert weights_of(stored) == {"orders": 50, "orders-canary": 50}
        for _ in range(int(SETTLE_TIMEOUT_S / 0.1)):
            if await gateway_weights(client, gateway) == {"orders": 50, "orders-canary": 50}:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the gateway kept {await gateway_weights(client, gateway)}")
        answers: Counter[str] = Counter()
        for _ in range(REQUESTS):
            answer = await client.get(f"{gateway.url}/orders/42")
            assert answer.status_code == 200, answer.text
            answers[answer.text] += 1
    assert set(answers) == {"orders", "orders-canary"}, answers
    for service in ("orders", "orders-canary"):
        assert 0.3 * REQUESTS <= answers[service] <= 0.7 * REQUESTS, answers
