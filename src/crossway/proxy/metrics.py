# The gateway's request metrics under the names every Crossway process uses.
#
# Theory of operation
# -------------------
# The admin port's `/metrics` serves `http_server_requests_total` and
# `http_server_request_duration_seconds` with {service, route, method,
# status_class} (crossway.telemetry.metrics' conventions: the OpenTelemetry
# HTTP semantic-convention names), for the gateway's requests as its clients
# see them, so a Prometheus that scrapes services built on the SDK reads the
# gateway with the same queries and recording rules. (Per-upstream figures
# are the golden signals the gateway pushes to the control plane, and the
# `crossway_gateway_upstream_*` series of `/stats`.)
#
# Counting is the gateway's hot path, so it is not prometheus_client's
# labelled children (a lock and a label lookup per update): `RequestCells`
# keeps plain lists per label cell, updated by the single event-loop thread,
# and a prometheus_client `Collector` turns them into metric families only
# when scraped.
#
# Invariants
# ----------
# - Cardinality is bounded: at most `max_cells` label cells; later ones are
#   counted under route "overflow".
# - The histogram uses the shared bounds (`LATENCY_BUCKETS`), so quantiles
#   compare across processes.
from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from crossway.telemetry.metrics import (
    HTTP_SERVER_DURATION,
    HTTP_SERVER_REQUESTS,
    LATENCY_BUCKETS,
    OVERFLOW,
    SERVER_LABELS,
    UNMATCHED,
    method_label,
    status_class,
)

K = TypeVar("K", bound=tuple[str, ...])

GATEWAY_SERVICE = "gateway"
MAX_CELLS = 2000

Cell = list[float]
"""Per-bucket counts (len(LATENCY_BUCKETS) + 1, the last +Inf), then the latency sum."""


class RequestCells:
    """Counts and latency histograms per label cell; see the module header."""

    def __init__(self, *, max_cells: int = MAX_CELLS) -> None:
        self.max_cells = max_cells
        self.server: dict[tuple[str, str, str], Cell] = {}
        """(route, method, status class) -> cell."""

    def served(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request answered to a client."""
        key = (route, method, status_class(status))
        cell = self.server.get(key)
        if cell is None:
            cell = self._new(self.server, key, (OVERFLOW, key[1], key[2]))
        _add(cell, seconds)

    def _new(self, cells: dict[K, Cell], key: K, overflow: K) -> Cell:
        if len(cells) >= self.max_cells:
            key = overflow  # beyond the bound: one shared cell per method and class
            found = cells.get(key)
            if found is not None:
                return found
        cell = cells[key] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        return cell


def _add(cell: Cell, seconds: float) -> None:
    cell[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
    cell[-1] += max(0.0, seconds)


class GatewayCollector(Collector):
    """Metric families from `RequestCells`, built at scrape time."""

    def __init__(self, cells: RequestCells, *, service: str = GATEWAY_SERVICE) -> None:
        self.cells = cells
        self.service = service

    def collect(self) -> Iterator[Metric]:
        served_total = CounterMetricFamily(
            HTTP_SERVER_REQUESTS,
            "HTTP requests served, by service, route template, method and status class.",
            labels=SERVER_LABELS,
        )
        served = HistogramMetricFamily(
            HTTP_SERVER_DURATION,
            "Duration of HTTP server requests, from the first byte in to the last byte out.",
            labels=SERVER_LABELS,
        )
        for (route, method, klass), cell in list(self.cells.server.items()):
            labels = [self.service, route or UNMATCHED, method_label(method), klass]
            count, buckets = _cumulative(cell)
            served_total.add_metric(labels, count)
            served.add_metric(labels, buckets, cell[-1])
        yield served_total
        yield served


def _cumulative(cell: Cell) -> tuple[float, list[tuple[str, float]]]:
    running = 0.0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), cell, strict=False):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return running, buckets


def gateway_registry(cells: RequestCells, *, service: str = GATEWAY_SERVICE) -> CollectorRegistry:
    """A registry holding the gateway's request metrics (and nothing else: the
    process collectors are added by whoever serves it)."""
    registry = CollectorRegistry()
    registry.register(GatewayCollector(cells, service=service))
    return registry
