"""A real `crossway server` process on loopback, talked to over HTTP."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from crossway.store.sqlite import open_sqlite_store
from crossway.testing.etcd import etcd_binary, start_etcd
from crossway.testing.services import free_port, require

from .helpers import TEST_ROUTES_SCRIPT, ServerProcess, run_cli, sse_frames

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def started() -> Iterator[list[ServerProcess]]:
    """Processes a test starts; stopped at the end whatever happens."""
    processes: list[ServerProcess] = []
    yield processes
    for process in processes:
        process.stop()


def _start(started: list[ServerProcess], args: list[str], **env: str) -> ServerProcess:
    server = ServerProcess.crossway(args, port=free_port(), env=env)
    started.append(server)
    server.wait_healthy()
    return server


def _assert_one_line_error(result: str, *needles: str) -> None:
    lines = result.strip().splitlines()
    assert len(lines) == 1, result
    assert "Traceback" not in result
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("store", ["sqlite", "memory"])
def test_probes_metrics_and_json_errors(
    store: str, tmp_path: Path, started: list[ServerProcess]
) -> None:
    server = _start(started, ["--store", store, "--data-dir", str(tmp_path / "data")])
    with httpx2.Client(base_url=server.base_url, timeout=5) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["store"] == store
        missing = http.get("/v1/nothing/here")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        malformed = http.post(
            "/readyz", content=b'{"broken": ', headers={"content-type": "application/json"}
        )
        assert malformed.status_code == 405
        assert malformed.json()["error"]["code"] == "method_not_allowed"
        metrics = http.get("/metrics").text
    cp = 'service="crossway-control-plane"'
    assert (
        f'http_server_requests_total{{method="GET",route="/healthz",{cp},status_class="2xx"}}'
        in (metrics)
    )
    assert (
        f'http_server_requests_total{{method="GET",route="unmatched",{cp},status_class="4xx"}} 1.0'
        in metrics
    )
    assert (
        f'http_server_request_duration_seconds_count{{method="GET",route="/readyz",{cp},'
        'status_class="2xx"} 1.0' in metrics
    )
    assert "process_cpu_seconds_total" in metrics
    if store == "sqlite":
        assert (tmp_path / "data" / "store.db").exists()
    server.signal(signal.SIGINT)
    assert server.wait() == 0
    records = server.log_records()  # every stderr line is a JSON object
    access = [r for r in records if r["logger"] == "crossway.access"]
    assert {"ts", "level", "msg", "method", "route", "status", "duration_ms", "remote"} <= set(
        access[0]
    )
    assert any(r["route"] == "unmatched" and r["status"] == 404 for r in access)


def test_token_auth(tmp_path: Path, started: list[ServerProcess]) -> None:
    server = _start(started, ["--store", "memory"], CROSSWAY_TOKEN="t0ken")
    with httpx2.Client(base_url=server.base_url, timeout=5) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        refused = http.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        assert http.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer t0ken"}).status_code == 200


def test_refuses_a_public_bind_without_a_token() -> None:
    result = run_cli(["--bind", "0.0.0.0", "--port", str(free_port()), "--store", "memory"])
    assert result.returncode != 0
    _assert_one_line_error(
        result.stderr, "refusing to listen on 0.0.0.0 without a token", "--insecure"
    )


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["--port", str(port), "--store", "memory"])
    assert result.returncode == 1
    _assert_one_line_error(result.stderr, "already in use")


def test_a_bad_flag_value_is_one_line() -> None:
    # Every flag's checks are covered in-process by tests/cli; this is the real process.
    result = run_cli(["--port", "http"])
    assert result.returncode == 2
    _assert_one_line_error(result.stderr, "Invalid value for '--port'")


def test_an_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli(["--data-dir", str(blocker / "data"), "--port", str(free_port())])
    assert result.returncode == 1
    _assert_one_line_error(result.stderr, "cannot create the data directory")


def test_an_unreachable_etcd_is_one_line() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    args = ["--store", "etcd", "--etcd-endpoints", endpoint, "--store-timeout", "2s"]
    result = run_cli([*args, "--port", str(free_port())])
    assert result.returncode == 1
    _assert_one_line_error(result.stderr, "etcd", endpoint)


async def test_sigterm_with_streams_and_requests_in_flight(tmp_path: Path) -> None:
    """In-flight requests finish, long polls and SSE end at once, exit 0, the
    sqlite store reopens."""
    port, data = free_port(), tmp_path / "data"
    server = ServerProcess.launch(
        [sys.executable, str(TEST_ROUTES_SCRIPT), str(port), str(data)], port=port
    )
    try:
        await asyncio.to_thread(server.wait_healthy)
        async with httpx2.AsyncClient(base_url=server.base_url, timeout=10) as http:
            stream = await http.send(http.build_request("GET", "/v1/watch"), stream=True)
            frames = sse_frames(stream)
            await anext(frames)
            slow = asyncio.create_task(http.get("/v1/test/slow", params={"seconds": "1.5"}))
            poll = asyncio.create_task(
                http.get("/v1/test/poll", params={"index": 0, "wait": "10m"})
            )
            await _until_in_flight(http, 4)  # stream, slow, poll and the /metrics call itself
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                rest = [f async for f in frames]
                polled = await poll
            assert time.monotonic() - signalled < 1.4  # well before the slow request ends
            assert rest[-1].comments == ["server shutting down; reconnect with Last-Event-ID"]
            assert polled.status_code == 200
            finished = await slow
            assert finished.status_code == 200
            assert finished.json() == {"slow": "done"}
            await stream.aclose()
        assert await asyncio.to_thread(server.wait) == 0
        assert time.monotonic() - signalled < 6
    finally:
        server.stop()
    messages = [r["msg"] for r in server.log_records()]
    assert "received SIGTERM, shutting down" in messages
    assert messages[-1] == "crossway server stopped"
    store = await open_sqlite_store(data / "store.db")
    try:
        assert await store.revision() == 0
    finally:
        await store.close()


async def _until_in_flight(http: httpx2.AsyncClient, count: int) -> None:
    async with asyncio.timeout(10):
        while True:
            text = (await http.get("/metrics")).text
            if f"http_server_requests_in_flight {float(count)}" in text:
                return
            await asyncio.sleep(0.02)


def test_sigterm_during_sse_then_restart_on_the_same_data(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    data = str(tmp_path / "data")
    server = _start(started, ["--data-dir", data])

    async def watch_then_terminate() -> list[str]:
        async with (
            httpx2.AsyncClient(base_url=server.base_url, timeout=10) as http,
            http.stream("GET", "/v1/watch", params={"prefix": "/"}) as response,
        ):
            frames = sse_frames(response)
            await anext(frames)
            server.signal(signal.SIGTERM)
            async with asyncio.timeout(5):
                return [c for f in [f async for f in frames] for c in f.comments]

    comments = asyncio.run(watch_then_terminate())
    assert "server shutting down; reconnect with Last-Event-ID" in comments
    assert server.wait() == 0
    again = _start(started, ["--data-dir", data])
    ready = httpx2.get(f"{again.base_url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["store"] == "sqlite"


def test_etcd_store_is_ready(started: list[ServerProcess]) -> None:
    require(etcd_binary() is not None, "etcd is not installed (run scripts/ensure-etcd)")
    require(
        importlib.util.find_spec("crossway.store.etcd") is not None, "the etcd backend is not built"
    )
    etcd = start_etcd()
    try:
        server = _start(started, ["--store", "etcd", "--etcd-endpoints", etcd.endpoint])
        ready = httpx2.get(f"{server.base_url}/readyz", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["store"] == "etcd"
        server.stop()
        assert server.process.returncode == 0
    finally:
        etcd.stop()
