"""Fixtures of the dashboard's end-to-end tests.

One control plane (a real `crossway server` subprocess on SQLite) serves the
dashboard to every test of this package (and stops after the last one),
seeded through its HTTP API (see seed.py) with golden signals kept flowing
in the background. A `crossway gateway`
subprocess follows its routes, in front of two tiny upstream servers
registered as `orders` and `orders-canary` that each answer their own name.
Each test gets a fresh headless Chromium (`dashboard`), and fails when the
browser saw any console error, uncaught exception or failed request.

Chromium missing, or the dashboard's assets not built: the tests skip with
the reason locally and fail under CI=true (`crossway.testing.services.require`).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from crossway.testing.server import CrosswayServer, start_server
from crossway.testing.services import free_port, require

from .browser import SCREENSHOTS, Dashboard, chromium_available, open_dashboard
from .seed import FIRING_RULE, SIGNAL_SERVICES, Seed, SignalPusher, seed

CANARY_SERVICES = ("orders", "orders-canary")
READY_TIMEOUT_S = 40.0


@pytest.fixture(scope="package")
def control() -> Iterator[CrosswayServer]:
    # Alerts evaluated every second, so the firing rule fires within the seeding.
    server = start_server(store="sqlite", env={"CROSSWAY_ALERT_INTERVAL": "1s"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def dashboard_url(control: CrosswayServer) -> str:
    """The control plane's URL, once it is known to serve the built dashboard."""
    answer = httpx.get(control.url + "/", timeout=10)
    served = answer.status_code == 200 and "text/html" in answer.headers.get("content-type", "")
    first_line = answer.text.strip().splitlines()[0] if answer.text.strip() else ""
    require(served, f"the control plane does not serve the dashboard at /: {first_line[:200]}")
    return control.url


@pytest.fixture(scope="package")
def upstreams() -> Iterator[dict[str, int]]:
    """{service: port} of one tiny HTTP server per canary service, each
    answering every GET with its own service name."""
    servers = {name: _name_server(name) for name in CANARY_SERVICES}
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        for s in servers.values()
    ]
    for thread in threads:
        thread.start()
    try:
        yield {name: server.server_address[1] for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()


def _name_server(name: str) -> ThreadingHTTPServer:
    body = name.encode()

    class Answer(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Answer)


@pytest.fixture(scope="package")
def seeded(control: CrosswayServer, upstreams: dict[str, int]) -> Iterator[Seed]:
    """The seeded control plane, once its signals show and the rule fires."""
    written = seed(control.url, upstreams)
    pusher = SignalPusher(control.url)
    pusher.start()
    try:
        _wait_for_signals(control.url)
        yield written
    finally:
        pusher.stop()


def _wait_for_signals(url: str) -> None:
    """Until every pushed service has requests in /v1/stats and the firing
    rule fires (the first 10 s point closes, then the alert loop runs)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    seen: set[str] = set()
    firing: list[str] = []
    with httpx.Client(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            rows = client.get("/v1/stats").json()["rows"]
            seen = {row["service"] for row in rows if row["requests"] > 0}
            alerts = client.get("/v1/alerts").json()["active"]
            firing = [a.get("alertname", "") for a in alerts if a.get("state") == "firing"]
            if seen >= set(SIGNAL_SERVICES) and FIRING_RULE in firing:
                return
            time.sleep(0.5)
    raise AssertionError(f"signals never showed: services {sorted(seen)}, firing {firing}")


@dataclass(frozen=True)
class Gateway:
    url: str
    admin_url: str


@pytest.fixture(scope="package")
def gateway(
    control: CrosswayServer, seeded: Seed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """`crossway gateway --control-plane …` on free loopback ports."""
    port, admin = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    argv = [
        *(sys.executable, "-m", "crossway.cli.main", "gateway"),
        *("--control-plane", control.url, "--host", "127.0.0.1"),
        *("--port", str(port), "--admin-port", str(admin)),
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=log)
    try:
        _wait_ready(f"http://127.0.0.1:{admin}/ready", process, log_path)
        yield Gateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"crossway gateway exited: {log_path.read_text()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"crossway gateway not ready: {log_path.read_text()[-2000:]}")


@pytest.fixture(scope="package")
def chromium() -> None:
    """Asked for first, so a machine without Chromium skips before any server starts."""
    require(chromium_available(), "chromium is not installed (run scripts/ensure-chromium)")


@pytest.fixture
async def dashboard(
    chromium: None, dashboard_url: str, seeded: Seed, tmp_path: Path
) -> AsyncIterator[Dashboard]:
    """A fresh headless Chromium on the seeded dashboard; the test fails when
    the browser saw an error (checked after the test body)."""
    async with open_dashboard(dashboard_url, tmp_path / "profile") as board:
        yield board
    board.assert_clean()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SCREENSHOTS.is_dir() and any(SCREENSHOTS.glob("*.png")):
        terminalreporter.write_line(f"dashboard screenshots: {SCREENSHOTS}")
