"""`run_gateway` with several workers: forked processes sharing the port."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from crossway.testing.services import free_port

pytestmark = pytest.mark.integration

YAML = """\
routes:
  ping:
    match: {path: /ping}
    direct_response: {status: 200, body: pong}
"""

SCRIPT = """
import sys
from pathlib import Path
from crossway.proxy.run import GatewaySettings, run_gateway
run_gateway(GatewaySettings(config_path=Path(sys.argv[1]), host="127.0.0.1",
    port=int(sys.argv[2]), admin_port=int(sys.argv[3]), workers=2))
"""


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never became ready")


def test_two_workers_share_the_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(YAML)
    port, admin = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(config), str(port), str(admin)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{admin}/ready")
        answers = []
        for _ in range(20):
            with httpx.Client() as client:  # a new connection each time
                answers.append(client.get(f"http://127.0.0.1:{port}/ping").text)
        assert answers == ["pong"] * 20
        children = subprocess.run(
            ["pgrep", "-P", str(process.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 1  # the second worker
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(20)
    assert code == 0, process.stdout.read() if process.stdout else b""
