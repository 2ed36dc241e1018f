"""Under `crossway up` the dashboard shows the processes page: the nav links
it (GET /v1/processes answers there) and every supervised process has a row."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import expect

from crossway.testing.services import free_port, require

from .browser import open_dashboard

pytestmark = pytest.mark.integration

HELLO = Path(__file__).with_name("hello_service.py")
READY_TIMEOUT_S = 40.0
REPLICAS = 2


def crossway_yaml(*, control: int, gateway: int, admin: int) -> str:
    return (
        "version: 1\n"
        "name: dashboard-e2e\n"
        f"control_plane: {{port: {control}}}\n"
        f"gateway: {{port: {gateway}, admin_port: {admin}}}\n"
        "services:\n"
        "  hello:\n"
        f"    command: [{json.dumps(sys.executable)}, {json.dumps(str(HELLO))}]\n"
        f"    replicas: {REPLICAS}\n"
        "    health: {http: /healthz, interval: 500ms}\n"
    )


def processes(url: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = httpx.get(f"{url}/v1/processes", timeout=5).json()["processes"]
    return rows


def all_healthy(url: str) -> bool:
    try:
        rows = [r for r in processes(url) if r["service"] == "hello"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return len(rows) == REPLICAS and all(r["state"] == "healthy" for r in rows)


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`crossway up` over two replicas of a tiny service; the control plane's URL."""
    folder = tmp_path_factory.mktemp("up")
    control, gateway, admin = free_port(), free_port(), free_port()
    file = folder / "crossway.yaml"
    file.write_text(crossway_yaml(control=control, gateway=gateway, admin=admin))
    out_path = folder / "up.out"
    with out_path.open("wb") as out:
        argv = [sys.executable, "-m", "crossway.cli.main", "up", "-f", str(file)]
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{control}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all_healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"crossway up never got healthy:\n{out_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_processes_page_lists_every_supervised_process(
    chromium: None, supervised: str, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        shell = await client.get(supervised + "/")
        rows = (await client.get(f"{supervised}/v1/processes")).json()["processes"]
    require(shell.status_code == 200, f"the dashboard is not served: {shell.text[:200]}")
    async with open_dashboard(supervised, tmp_path / "profile") as board:
        await board.open("/", "overview")
        await board.by_id("nav-processes").click()
        root = await board.loaded("processes")
        assert board.page.url.endswith("/processes")
        for row in rows:
            process_row = board.by_id(f"process-row-{row['instance_id']}")
            await expect(process_row).to_contain_text(row["service"])
        await expect(root).to_contain_text("healthy")
        await board.screenshots("processes")
    board.assert_clean()
