"""A real Prometheus scrapes the control plane, a gateway and an instrumented service.

- `promtool check metrics` passes on every `/metrics` (the control plane's,
  process collectors and registry gauges included, the gateway's admin
  `/metrics` and `/stats`, and one written with the conventions of
  `crossway.telemetry.metrics`);
- Prometheus (Debian's package, started here on a free loopback port with a
  private config and data directory) scrapes both every second, evaluates the
  exported recording rules, and answers PromQL over the raw metrics and the
  recorded golden signals.

Run as a script (`python test_prometheus.py PORT DATA_DIR`) this file is the
control plane under test: `crossway server` with the stats routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client import CollectorRegistry, start_http_server

from crossway.telemetry.alerts.export import prometheus_rules
from crossway.telemetry.alerts.rules import parse_rules
from crossway.telemetry.metrics import HttpClientMetrics, HttpServerMetrics
from crossway.testing.services import free_port, require

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve()
RULES = """
rules:
  - name: orders-errors
    expr: success_rate{service="orders"} < 0.99
"""


def _binary(name: str) -> str:
    found = shutil.which(name)
    require(found is not None, f"{name} is not installed (run scripts/ensure-prometheus)")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def control_plane() -> Iterator[str]:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="crossway-prom-"))
    log = (data / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, str(HERE), str(port), str(data)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx2.get(f"{url}/readyz", timeout=1).status_code == 200, process)
        yield url
    finally:
        process.terminate()
        process.wait(20)
        log.close()


class Service:
    """A service instrumented with the conventions, serving /metrics on loopback."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.server = HttpServerMetrics(registry, service="orders")
        self.client = HttpClientMetrics(registry, service="checkout")
        self.registry = registry
        self.count = 0

    def requests(self, n: int) -> None:
        """`n` requests, one in twenty failing, latencies 4 ms … 94 ms."""
        for _ in range(n):
            self.count += 1
            status = 503 if self.count % 20 == 0 else 200
            seconds = 0.004 + (self.count % 10) / 100
            self.server.observe("/orders/{id}", "GET", status, seconds)
            self.client.observe("orders", "/orders/{id}", "GET", status, seconds + 0.002)


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[Service, str]]:
    instrumented = Service()
    instrumented.requests(200)
    port = free_port()
    httpd, thread = start_http_server(port, addr="127.0.0.1", registry=instrumented.registry)
    try:
        yield instrumented, f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        thread.join(5)


GATEWAY_ROUTES = """\
routes:
  health:
    match: {path: /healthz}
    direct_response: {status: 200, body: ok}
"""


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, str]]:
    """`crossway gateway` answering /healthz itself: (proxy URL, admin URL)."""
    work = Path(tempfile.mkdtemp(prefix="crossway-prom-gw-"))
    (work / "gateway.yaml").write_text(GATEWAY_ROUTES)
    port, admin = free_port(), free_port()
    log = (work / "gateway.log").open("wb")
    command = [sys.executable, "-m", "crossway.cli.main", "gateway"]
    options = ["--config", str(work / "gateway.yaml"), "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, *options, "--port", str(port), "--admin-port", str(admin), "--no-telemetry"],
        stdout=log,
        stderr=log,
    )
    proxy, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    try:
        _wait(lambda: httpx2.get(f"{admin_url}/ready", timeout=1).status_code == 200, process)
        yield proxy, admin_url
    finally:
        process.terminate()
        process.wait(20)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def steady_traffic(control_plane: str, instrumented: Service) -> Iterator[None]:
    """Requests to the control plane and the service while Prometheus scrapes."""
    stop = threading.Event()

    def loop() -> None:
        with httpx2.Client(base_url=control_plane) as client:
            while not stop.wait(0.05):
                client.get("/v1/stats")
                instrumented.requests(20)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def _wait(ready: Any, process: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode}")
        with contextlib.suppress(httpx2.TransportError):
            if ready():
                return
        time.sleep(0.1)
    raise AssertionError("not ready in time")


def _traffic(url: str) -> None:
    registration = {"address": "127.0.0.1", "port": 8080, "ttl": "60s"}
    for i in range(3):
        r = httpx2.put(f"{url}/v1/services/orders/instances/o-{i}", json=registration)
        assert r.status_code == 200
    for _ in range(5):
        assert httpx2.get(f"{url}/v1/stats").status_code == 200
    assert httpx2.get(f"{url}/nowhere").status_code == 404


def test_promtool_accepts_every_metrics_page(
    control_plane: str, service: tuple[Service, str], gateway: tuple[str, str]
) -> None:
    promtool = _binary("promtool")
    _traffic(control_plane)
    proxy, admin = gateway
    for _ in range(5):
        assert httpx2.get(f"{proxy}/healthz").status_code == 200
    pages = [f"{control_plane}/metrics", f"{service[1]}/metrics"]
    for page in (*pages, f"{admin}/metrics", f"{admin}/stats"):
        text = httpx2.get(page).text
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0, (page, check.stdout, check.stderr)
    page = httpx2.get(f"{control_plane}/metrics").text
    assert "http_server_request_duration_seconds_bucket" in page
    assert 'crossway_service_instances{service="orders",status="passing"} 3.0' in page


@contextlib.contextmanager
def prometheus(targets: dict[str, str], rules: str) -> Iterator[str]:
    binary = _binary("prometheus")
    work = Path(tempfile.mkdtemp(prefix="crossway-prometheus-"))
    (work / "rules.yml").write_text(rules)
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{url.split('//')[1]}']\n"
        for job, url in targets.items()
    )
    config = (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {work / 'rules.yml'}\nscrape_configs:\n{jobs}"
    )
    (work / "prometheus.yml").write_text(config)
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx2.get(f"{url}/-/ready", timeout=1).status_code == 200, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def query(prom: str, promql: str, timeout: float = 45) -> list[dict[str, Any]]:
    """The first non-empty answer to `promql` (Prometheus needs a few scrapes for rates)."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx2.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=5).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_prometheus_scrapes_and_answers_promql(
    control_plane: str, service: tuple[Service, str], gateway: tuple[str, str]
) -> None:
    instrumented, service_url = service
    proxy, admin = gateway
    _traffic(control_plane)
    for _ in range(7):
        assert httpx2.get(f"{proxy}/healthz").status_code == 200
    rules = prometheus_rules(parse_rules(RULES))
    targets = {"crossway": control_plane, "orders": service_url, "gateway": admin}
    with prometheus(targets, rules) as prom, steady_traffic(control_plane, instrumented):
        assert value(query(prom, "sum(up) == 3")) == 3  # every target scraped
        through = 'sum(http_server_requests_total{job="gateway",service="gateway",route="health"})'
        assert value(query(prom, f"{through} >= 7")) >= 7
        healthy = 'crossway_service_instances{service="orders",status="passing"}'
        assert value(query(prom, healthy)) == 3
        stats = 'sum(http_server_requests_total{job="crossway",route="/v1/stats"})'
        assert value(query(prom, stats)) >= 5
        rate = 'sum(rate(http_server_requests_total{job="crossway",route="/v1/stats"}[10s])) > 0'
        assert value(query(prom, rate)) > 0
        p50 = (
            "histogram_quantile(0.5, sum by (le) "
            '(http_server_request_duration_seconds_bucket{service="orders"}))'
        )
        assert 0.02 <= value(query(prom, p50)) <= 0.08
        # The exported recording rules compute the golden signals from the raw metrics …
        rps = value(query(prom, 'service:http_server_requests:rate1m{service="orders"} > 0'))
        assert rps > 0
        success = 'service:http_server_success:ratio_rate1m{service="orders"}'
        assert value(query(prom, success)) == pytest.approx(0.95, abs=0.02)
        p99_orders = 'service:http_server_request_duration_seconds:p99_1m{service="orders"} > 0'
        p99 = value(query(prom, p99_orders))
        assert 0.05 < p99 <= 0.1
        [edge] = query(prom, "service_peer:http_client_requests:rate1m > 0")
        assert edge["metric"]["service"] == "checkout"
        assert edge["metric"]["peer_service"] == "orders"
        # … and the exported alerting rule fires on them.
        firing = query(prom, 'ALERTS{alertname="orders-errors",alertstate="firing"}')
        assert firing[0]["metric"]["service"] == "orders"
        groups = httpx2.get(f"{prom}/api/v1/rules").json()["data"]["groups"]
        assert {g["name"] for g in groups} == {"crossway-golden-signals", "crossway-alerts"}
        assert all(r["health"] != "err" for g in groups for r in g["rules"])


def value(result: list[dict[str, Any]]) -> float:
    assert result, "Prometheus answered an empty vector"
    return float(result[0]["value"][1])


def _serve(port: int, data_dir: Path) -> None:
    """The control plane under test: `crossway server` plus the stats routes."""
    import uvloop

    from crossway.server import ROUTE_PROVIDERS, ServerSettings, serve
    from crossway.server.api import stats

    settings = ServerSettings(port=port, data_dir=data_dir, log_format="json")
    extra = [] if stats.routes in ROUTE_PROVIDERS else [stats.routes]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, extra=extra))


if __name__ == "__main__":
    _serve(int(sys.argv[1]), Path(sys.argv[2]))
