"""Every page of the dashboard renders the seeded control plane's real data.

Each test opens one page (or a list page and one of its items), checks what
it shows against the seed and the control plane's own API answers, and saves
the page's review screenshots (1280x900 and 390x844, light and dark) under
build/test-output/dashboard/.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import expect

from .browser import Dashboard, shows_value
from .seed import (
    EDGES,
    ELECTION,
    FIRING_RULE,
    INSTANCES,
    LEADER_VALUE,
    LOCK,
    QUIET_RULE,
    SIGNAL_SERVICES,
    Seed,
)

pytestmark = pytest.mark.integration


def shown_by_some_answer(
    text: str, answers: list[dict[str, Any]], service: str, field: str, **tolerance: float
) -> bool:
    """Whether the row `text` shows `field` of `service` as one of the stats
    listings the page received said it (the page polls; values move)."""
    for answer in answers:
        for row in answer["rows"]:
            value = row[field] * (100 if field == "success_rate" else 1)
            if row["service"] == service and shows_value(text, value, **tolerance):
                return True
    return False


async def test_overview_shows_services_with_golden_signals(
    dashboard: Dashboard, seeded: Seed
) -> None:
    await dashboard.open("/", "overview")
    for service in seeded.services:
        await expect(dashboard.by_id(f"service-row-{service}")).to_be_visible()
    for service in SIGNAL_SERVICES:
        await expect(dashboard.by_id(f"sparkline-{service}")).to_be_visible()
        text = await dashboard.by_id(f"service-row-{service}").inner_text()
        answers = await dashboard.answers_to("/v1/stats?")
        assert shown_by_some_answer(text, answers, service, "success_rate"), text
        assert shown_by_some_answer(text, answers, service, "p99_ms", unit_scale=1000), text
        assert shown_by_some_answer(text, answers, service, "rps"), text
    await dashboard.screenshots("overview")


async def test_service_page_shows_instances_charts_and_edges(
    dashboard: Dashboard, seeded: Seed
) -> None:
    await dashboard.open("/services/checkout", "service")
    for instance, zone, metadata in INSTANCES["checkout"]:
        row = dashboard.by_id(f"instance-row-{instance}")
        await expect(row).to_be_visible()
        await expect(row).to_contain_text(zone)
        await expect(row).to_contain_text(metadata["version"])
    for chart in ("chart-rps", "chart-success", "chart-latency"):
        container = dashboard.by_id(chart)
        await expect(container).to_be_visible()
        drawn = container.locator("canvas, svg")
        await expect(drawn.first).to_be_visible()
    callers, callees = dashboard.by_id("callers"), dashboard.by_id("callees")
    for caller, callee in EDGES:
        if callee == "checkout":
            await expect(callers.get_by_test_id(f"edge-{caller}-{callee}")).to_be_visible()
        if caller == "checkout":
            await expect(callees.get_by_test_id(f"edge-{caller}-{callee}")).to_be_visible()
    await dashboard.screenshots("service")


async def test_topology_shows_every_edge(dashboard: Dashboard) -> None:
    await dashboard.open("/topology", "topology")
    await expect(dashboard.by_id("topology-graph")).to_be_visible()
    for caller, callee in EDGES:
        await expect(dashboard.by_id(f"edge-{caller}-{callee}").first).to_be_attached()
    await dashboard.screenshots("topology")


async def test_config_browser_and_key_page(dashboard: Dashboard) -> None:
    await dashboard.open("/config", "config")
    await expect(dashboard.by_id("ns-prod")).to_be_visible()
    await expect(dashboard.by_id("ns-staging")).to_be_visible()
    await dashboard.by_id("ns-prod").click()
    await dashboard.by_id("group-prod-orders").click()
    await expect(dashboard.by_id("key-prod-orders-app.yaml")).to_be_visible()
    await dashboard.screenshots("config")
    await dashboard.by_id("key-prod-orders-app.yaml").click()
    await dashboard.loaded("config-key")
    assert dashboard.page.url.endswith("/config/prod/orders/app.yaml")
    await expect(dashboard.by_id("config-editor")).to_contain_text("fast_path: true")
    for version in (1, 2, 3):
        await expect(dashboard.by_id(f"history-row-{version}")).to_be_visible()
    await dashboard.screenshots("config-key")


async def test_routes_pages_show_the_documents(dashboard: Dashboard) -> None:
    root = await dashboard.open("/routes", "routes")
    await expect(root).to_contain_text("orders")
    await expect(root).to_contain_text("checkout-api")
    await dashboard.screenshots("routes")
    await dashboard.open("/routes/checkout-api", "route")
    await expect(dashboard.by_id("route-editor")).to_contain_text("/checkout")
    await expect(dashboard.by_id("canary-slider-0")).to_be_attached()
    await dashboard.open("/routes/orders", "route")
    await expect(dashboard.by_id("route-editor")).to_contain_text("orders-canary")
    await dashboard.screenshots("route")


async def test_policies_pages_show_the_documents(dashboard: Dashboard) -> None:
    root = await dashboard.open("/policies", "policies")
    await expect(root).to_contain_text("payments")
    await dashboard.screenshots("policies")
    root = await dashboard.open("/policies/payments", "policy")
    await expect(root).to_contain_text("least_request")
    await expect(root).to_contain_text("2s")
    await dashboard.screenshots("policy")


async def test_trace_search_finds_the_error_trace_and_shows_its_waterfall(
    dashboard: Dashboard, seeded: Seed
) -> None:
    await dashboard.open("/traces", "traces")
    everything = (seeded.ok_trace, seeded.error_trace, seeded.slow_trace)
    await dashboard.by_id("trace-search-service").select_option("web")
    await dashboard.by_id("trace-search-submit").click()
    for trace in everything:
        await expect(dashboard.by_id(f"trace-row-{trace.trace_id}")).to_be_visible()
    await dashboard.by_id("trace-search-errors").check()
    await dashboard.by_id("trace-search-submit").click()
    error_row = dashboard.by_id(f"trace-row-{seeded.error_trace.trace_id}")
    await expect(error_row).to_be_visible()
    for trace in (seeded.ok_trace, seeded.slow_trace):
        await expect(dashboard.by_id(f"trace-row-{trace.trace_id}")).to_have_count(0)
    await dashboard.screenshots("traces")
    await error_row.click()
    await dashboard.loaded("trace")
    assert seeded.error_trace.trace_id in dashboard.page.url
    await expect(dashboard.by_id("waterfall")).to_be_visible()
    for span_id in seeded.error_trace.span_ids:
        await expect(dashboard.by_id(f"span-{span_id}")).to_be_visible()
    await dashboard.screenshots("trace")


async def test_minimum_duration_search_finds_the_slow_trace_and_its_waterfall(
    dashboard: Dashboard, seeded: Seed
) -> None:
    await dashboard.open("/traces", "traces")
    await dashboard.by_id("trace-search-service").select_option("web")
    await dashboard.by_id("trace-search-min-duration").fill("1000")  # ms, as labelled
    await dashboard.by_id("trace-search-submit").click()
    slow_row = dashboard.by_id(f"trace-row-{seeded.slow_trace.trace_id}")
    await expect(slow_row).to_be_visible()
    for trace in (seeded.ok_trace, seeded.error_trace):
        await expect(dashboard.by_id(f"trace-row-{trace.trace_id}")).to_have_count(0)
    await slow_row.click()
    await dashboard.loaded("trace")
    for span_id in seeded.slow_trace.span_ids:
        await expect(dashboard.by_id(f"span-{span_id}")).to_be_visible()
    root_row = await dashboard.by_id(f"span-{seeded.slow_trace.span_ids[0]}").inner_text()
    assert shows_value(root_row, 2600, unit_scale=1000), root_row


async def test_alerts_page_shows_rules_and_the_firing_one(dashboard: Dashboard) -> None:
    await dashboard.open("/alerts", "alerts")
    await expect(dashboard.by_id(f"alert-rule-{FIRING_RULE}")).to_be_visible()
    await expect(dashboard.by_id(f"alert-rule-{QUIET_RULE}")).to_be_visible()
    await expect(dashboard.by_id(f"alert-firing-{FIRING_RULE}")).to_be_visible()
    await expect(dashboard.by_id(f"alert-firing-{QUIET_RULE}")).to_have_count(0)
    await expect(dashboard.by_id("alert-history")).to_contain_text(FIRING_RULE)
    await dashboard.screenshots("alerts")


async def test_coordination_page_shows_lock_leader_and_session(
    dashboard: Dashboard, seeded: Seed
) -> None:
    await dashboard.open("/coordination", "coordination")
    await expect(dashboard.by_id(f"lock-row-{LOCK}")).to_contain_text("checkout-1")
    await expect(dashboard.by_id(f"leader-row-{ELECTION}")).to_contain_text(LEADER_VALUE)
    await expect(dashboard.by_id(f"session-row-{seeded.session_id}")).to_contain_text("checkout-1")
    await dashboard.screenshots("coordination")


async def test_navigation_links_reach_every_page(dashboard: Dashboard) -> None:
    await dashboard.open("/", "overview")
    for page in ("topology", "config", "routes", "policies", "traces", "alerts", "coordination"):
        await dashboard.by_id(f"nav-{page}").first.click()
        await dashboard.loaded(page)
    # Not under `crossway up`: GET /v1/processes answers 404, so no link.
    await expect(dashboard.by_id("nav-processes")).to_have_count(0)
