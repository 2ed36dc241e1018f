"""Metric naming conventions: names, labels, buckets and bounded cardinality."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from crossway.telemetry.metrics import (
    CLIENT_LABELS,
    HTTP_CLIENT_DURATION,
    HTTP_CLIENT_REQUESTS_TOTAL,
    HTTP_SERVER_DURATION,
    HTTP_SERVER_REQUESTS_TOTAL,
    KNOWN_METHODS,
    LATENCY_BUCKETS,
    OVERFLOW,
    SERVER_LABELS,
    STATUS_CLASSES,
    HttpClientMetrics,
    HttpServerMetrics,
    LabelBudget,
    is_error,
    method_label,
    status_class,
)


def test_names_follow_the_opentelemetry_http_conventions() -> None:
    assert HTTP_SERVER_DURATION == "http_server_request_duration_seconds"
    assert HTTP_CLIENT_DURATION == "http_client_request_duration_seconds"
    assert HTTP_SERVER_REQUESTS_TOTAL == "http_server_requests_total"
    assert SERVER_LABELS == ("service", "route", "method", "status_class")
    assert CLIENT_LABELS == ("service", "peer_service", "route", "method", "status_class")


def test_status_classes_and_errors() -> None:
    assert [status_class(s) for s in (101, 204, 302, 404, 503, 0, 600)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "none",
        "none",
    ]
    assert is_error("5xx")
    assert is_error("none")
    assert not is_error("4xx")  # the caller's mistake, not a failure of the service


@given(st.integers(), st.text(max_size=12))
def test_labels_are_always_from_a_bounded_set(status: int, method: str) -> None:
    assert status_class(status) in STATUS_CLASSES
    assert method_label(method) in KNOWN_METHODS | {"other"}


@given(st.lists(st.text(max_size=5), max_size=50), st.integers(1, 10))
def test_a_budget_admits_at_most_its_limit(values: list[str], limit: int) -> None:
    budget = LabelBudget(limit)
    admitted = {budget.admit(v) for v in values} - {OVERFLOW}
    assert len(admitted) <= limit
    assert len(budget) <= limit
    for value in admitted:
        assert budget.admit(value) == value  # once admitted, always admitted


def test_a_budget_holds_under_threads() -> None:
    budget = LabelBudget(10)

    def admit(offset: int) -> None:
        for i in range(200):
            budget.admit(f"v{offset * 1000 + i}")

    threads = [threading.Thread(target=admit, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(budget) == 10
    assert budget.overflowed == 800 - 10
    with pytest.raises(ValueError, match="at least one"):
        LabelBudget(0)


def test_server_metrics_carry_every_label_and_cap_routes() -> None:
    registry = CollectorRegistry()
    metrics = HttpServerMetrics(registry, service="orders", max_routes=2)
    metrics.observe("/a", "GET", 200, 0.02)
    metrics.observe("/b", "BREW", 503, 0.3)
    metrics.observe("/c", "GET", 200, -1.0)  # past the budget; a negative duration counts as 0
    labels = {"service": "orders", "route": "/a", "method": "GET", "status_class": "2xx"}
    assert registry.get_sample_value(HTTP_SERVER_REQUESTS_TOTAL, labels) == 1
    assert registry.get_sample_value(f"{HTTP_SERVER_DURATION}_sum", labels) == pytest.approx(0.02)
    other = {"service": "orders", "route": "/b", "method": "other", "status_class": "5xx"}
    assert registry.get_sample_value(HTTP_SERVER_REQUESTS_TOTAL, other) == 1
    capped = {**labels, "route": OVERFLOW}
    assert registry.get_sample_value(f"{HTTP_SERVER_DURATION}_count", capped) == 1
    assert registry.get_sample_value(f"{HTTP_SERVER_DURATION}_sum", capped) == 0
    text = generate_latest(registry).decode()
    for bound in LATENCY_BUCKETS:
        assert f'le="{float(bound)}"' in text


def test_client_metrics_name_the_peer() -> None:
    registry = CollectorRegistry()
    metrics = HttpClientMetrics(registry, service="checkout", max_peers=1)
    metrics.observe("orders", "/orders/{id}", "POST", 201, 0.05)
    metrics.observe("payments", "/pay", "POST", 0, 1.0)
    labels = {
        "service": "checkout",
        "peer_service": "orders",
        "route": "/orders/{id}",
        "method": "POST",
        "status_class": "2xx",
    }
    assert registry.get_sample_value(HTTP_CLIENT_REQUESTS_TOTAL, labels) == 1
    overflow = {**labels, "peer_service": OVERFLOW, "route": "/pay", "status_class": "none"}
    assert registry.get_sample_value(HTTP_CLIENT_REQUESTS_TOTAL, overflow) == 1
