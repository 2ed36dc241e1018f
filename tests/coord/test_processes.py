"""Real processes: a control plane, `crossway lock` and `crossway elect` clients,
killed and stopped to see coordination survive it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from crossway.testing.etcd import EtcdProcess
from crossway.testing.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HERE = Path(__file__).parent
TTL = 2.0


@dataclass
class ControlPlane:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _start_plane(store: str, tmp_path: Path, etcd: EtcdProcess | None) -> ControlPlane:
    port = free_port()
    args = [sys.executable, str(HERE / "serve_coord.py"), str(port), store, str(tmp_path / "cp")]
    if etcd is not None:
        args.append(etcd.endpoint)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    plane = ControlPlane(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, "the control plane exited at start"
        try:
            if httpx2.get(plane.url + "/healthz", timeout=1).status_code == 200:
                return plane
        except httpx2.HTTPError:
            time.sleep(0.05)
    plane.stop()
    raise AssertionError("the control plane did not start")


@pytest.fixture(params=["sqlite", "etcd"])
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ControlPlane]:
    etcd = None
    if request.param == "etcd":
        etcd = request.getfixturevalue("etcd_server")
    cp = _start_plane(request.param, tmp_path, etcd)
    yield cp
    cp.stop()


@pytest.fixture(scope="module")
def sqlite_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One control plane for the CLI tests (each uses names of its own)."""
    cp = _start_plane("sqlite", tmp_path_factory.mktemp("plane"), None)
    yield cp
    cp.stop()


@pytest.fixture
def own_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane the test may stop."""
    cp = _start_plane("sqlite", tmp_path, None)
    yield cp
    cp.stop()


@pytest.fixture
async def http(sqlite_plane: ControlPlane) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=sqlite_plane.url, timeout=10) as c:
        yield c


_spawned: list[asyncio.subprocess.Process] = []


@pytest.fixture(autouse=True)
async def _reap() -> AsyncIterator[None]:
    """Kill whatever CLI process a test left running."""
    yield
    while _spawned:
        process = _spawned.pop()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def cli(url: str, *args: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "cli_entry.py"),
        *args,
        env={**os.environ, "CROSSWAY_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _spawned.append(process)
    return process


async def line_with(stream: asyncio.StreamReader | None, text: str, within: float = 20) -> str:
    assert stream is not None
    async with asyncio.timeout(within):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"the stream ended before {text!r}"
            if text in line:
                return line


async def finished(process: asyncio.subprocess.Process, within: float = 20) -> tuple[int, str]:
    async with asyncio.timeout(within):
        _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_leader_failover_after_sigkill(plane: ControlPlane) -> None:
    ttl = f"{TTL:g}s"
    first = await cli(plane.url, "elect", "primary", "--value", "first", "--ttl", ttl)
    await line_with(first.stdout, "elected: leader of primary")
    second = await cli(plane.url, "elect", "primary", "--value", "second", "--ttl", ttl)
    try:
        await line_with(second.stderr, "waiting; primary is led by 'first'")
        first.kill()  # SIGKILL: no resignation, no session delete; only the TTL
        killed = time.monotonic()
        await line_with(second.stdout, "elected: leader of primary", within=TTL + 5)
        took = time.monotonic() - killed
        assert took <= TTL + 1.0, f"the new leader took {took:.2f}s"
        async with httpx2.AsyncClient(base_url=plane.url) as http:
            leader = (await http.get("/v1/elections/primary/leader")).json()["leader"]
        assert leader["value"] == "second"
        second.send_signal(signal.SIGINT)
        status, err = await finished(second)
        assert status == 0, err
    finally:
        await first.wait()


async def sessions_named(http: httpx2.AsyncClient, text: str) -> list[str]:
    listed = (await http.get("/v1/sessions")).json()
    return [s["session"] for s in listed if text in s["name"]]


async def test_lock_runs_the_command_with_its_fence(
    sqlite_plane: ControlPlane, http: httpx2.AsyncClient
) -> None:
    script = "import os; print('fence', os.environ['CROSSWAY_LOCK_FENCE']); raise SystemExit(7)"
    run = await cli(sqlite_plane.url, "lock", "fenced", "--", sys.executable, "-c", script)
    out, err = await asyncio.wait_for(run.communicate(), 20)
    assert run.returncode == 7, err.decode()
    fence = int(out.decode().split()[1])
    assert fence > 0
    assert "holding fenced" in err.decode()
    assert (await http.get("/v1/locks/fenced")).json()["holder"] is None
    assert await sessions_named(http, "lock fenced") == [], "the session was ended"
    again = await cli(sqlite_plane.url, "lock", "fenced", "--", sys.executable, "-c", script)
    out, _ = await asyncio.wait_for(again.communicate(), 20)
    assert int(out.decode().split()[1]) > fence


async def test_lock_gives_up_after_wait(
    sqlite_plane: ControlPlane, http: httpx2.AsyncClient
) -> None:
    sid = (await http.post("/v1/sessions", json={"ttl": "30s", "name": "other"})).json()["session"]
    assert (await http.put(f"/v1/locks/busy?session={sid}")).status_code == 200
    run = await cli(sqlite_plane.url, "lock", "busy", "--wait", "300ms", "--", "true")
    status, err = await finished(run)
    assert status == 3
    assert "held by session" in err
    assert "Traceback" not in err


async def test_a_lost_session_stops_the_command(
    sqlite_plane: ControlPlane, http: httpx2.AsyncClient
) -> None:
    run = await cli(sqlite_plane.url, "lock", "doomed", "--ttl", "3s", "--", "sleep", "60")
    await line_with(run.stderr, "holding doomed")
    (session,) = await sessions_named(http, "lock doomed")
    await http.delete(f"/v1/sessions/{session}")  # as if it had expired
    status, err = await finished(run, within=10)
    assert status == 4
    assert "lost the session" in err
    assert len(err.strip().splitlines()) == 1


async def test_an_unreachable_control_plane_stops_the_command_within_the_ttl(
    own_plane: ControlPlane,
) -> None:
    run = await cli(own_plane.url, "lock", "job", "--ttl", "2s", "--", "sleep", "60")
    await line_with(run.stderr, "holding job")
    own_plane.process.send_signal(signal.SIGSTOP)  # requests now hang
    stopped = time.monotonic()
    try:
        status, err = await finished(run, within=10)
    finally:
        own_plane.process.send_signal(signal.SIGCONT)
    took = time.monotonic() - stopped
    assert status == 4, err
    assert "could not renew" in err
    assert took <= 2.0 + 0.5, f"the command ran {took:.2f}s past the last renewal"


async def test_elect_runs_the_command_while_leading(
    sqlite_plane: ControlPlane, http: httpx2.AsyncClient
) -> None:
    script = "import os; print('term', os.environ['CROSSWAY_LEADER_FENCE'])"
    run = await cli(sqlite_plane.url, "elect", "cron", "--", sys.executable, "-c", script)
    out, err = await asyncio.wait_for(run.communicate(), 20)
    assert run.returncode == 0, err.decode()
    assert "elected: leader of cron" in out.decode()
    assert "term " in out.decode()
    assert (await http.get("/v1/elections/cron/leader")).json() == {"leader": None}


async def test_errors_are_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = await cli(url, "lock", "job", "--", "true")
    status, err = await finished(run)
    assert status == 1
    assert "cannot reach the control plane" in err
    assert len(err.strip().splitlines()) == 1
    bad = await cli(url, "lock", "job", "--ttl", "soon", "--", "true")
    status, err = await finished(bad)
    assert status == 2
    assert "--ttl" in err


async def test_a_waiter_that_hangs_up_leaves_the_line(
    sqlite_plane: ControlPlane, http: httpx2.AsyncClient
) -> None:
    a = (await http.post("/v1/sessions", json={"ttl": "30s"})).json()["session"]
    b = (await http.post("/v1/sessions", json={"ttl": "30s"})).json()["session"]
    await http.put(f"/v1/locks/hangup?session={a}")
    with pytest.raises(httpx2.TimeoutException):  # the client gives up and closes
        await http.put(f"/v1/locks/hangup?session={b}&wait=20s", timeout=0.5)
    for _ in range(100):
        if not (await http.get("/v1/locks/hangup")).json()["waiting"]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the place of a client that hung up was kept")
