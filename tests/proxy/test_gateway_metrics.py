"""The gateway's request metrics: the shared names and labels, counted in plain
cells and rendered by prometheus_client at scrape time."""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from crossway.proxy.metrics import RequestCells, gateway_registry
from crossway.telemetry.metrics import LATENCY_BUCKETS, OTHER_METHOD, OVERFLOW
from crossway.testing.services import require


def samples(cells: RequestCells) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(gateway_registry(cells)).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_served_and_called_requests_carry_the_conventional_labels() -> None:
    cells = RequestCells()
    cells.served("orders", "GET", 200, 0.004)
    cells.served("orders", "GET", 200, 0.2)
    cells.served("orders", "BREW", 503, 0.01)  # an unknown method is counted as OTHER_METHOD
    cells.served("orders", "GET", 0, 1.0)  # the client left before any answer
    found = samples(cells)
    ok = (("method", "GET"), ("route", "orders"), ("service", "gateway"), ("status_class", "2xx"))
    assert found[("http_server_requests_total", ok)] == 2
    assert found[("http_server_request_duration_seconds_count", ok)] == 2
    assert abs(found[("http_server_request_duration_seconds_sum", ok)] - 0.204) < 1e-9
    below = tuple(sorted((*ok, ("le", repr(LATENCY_BUCKETS[0])))))
    assert found[("http_server_request_duration_seconds_bucket", below)] == 0
    fast = tuple(sorted((*ok, ("le", "0.005"))))  # 4 ms
    assert found[("http_server_request_duration_seconds_bucket", fast)] == 1
    inf = tuple(sorted((*ok, ("le", "+Inf"))))
    assert found[("http_server_request_duration_seconds_bucket", inf)] == 2
    other = (("method", OTHER_METHOD), ("route", "orders"), ("service", "gateway"))
    assert found[("http_server_requests_total", (*other, ("status_class", "5xx")))] == 1
    gone = (
        ("method", "GET"),
        ("route", "orders"),
        ("service", "gateway"),
        ("status_class", "none"),
    )
    assert found[("http_server_requests_total", gone)] == 1


def test_label_cells_are_bounded() -> None:
    cells = RequestCells(max_cells=3)
    for i in range(50):
        cells.served(f"route-{i}", "GET", 200, 0.001)
    assert len(cells.server) <= 4  # three cells and the shared overflow one
    found = samples(cells)
    spilled = (
        ("method", "GET"),
        ("route", OVERFLOW),
        ("service", "gateway"),
        ("status_class", "2xx"),
    )
    assert found[("http_server_requests_total", spilled)] == 47


def test_promtool_accepts_the_page() -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (run scripts/ensure-prometheus)")
    assert promtool is not None
    cells = RequestCells()
    cells.served("orders", "GET", 200, 0.004)
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(gateway_registry(cells)),
        capture_output=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
