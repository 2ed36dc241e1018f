"""The supervisor with real child processes and a fake registry, without a control plane."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from pathlib import Path

import pytest

from crossway.up.logs import LogHub
from crossway.up.policy import Backoff
from crossway.up.spec import HealthSpec
from crossway.up.supervisor import ProcessSpec, Supervisor

pytestmark = pytest.mark.timeout(60)

PY = sys.executable


class FakeRegistry:
    def __init__(self) -> None:
        self.passing: dict[str, set[str]] = {}
        self.deleted: list[str] = []

    async def passing_ids(self, service: str) -> set[str] | None:
        return self.passing.get(service, set())

    async def deregister(self, service: str, instance_id: str) -> None:
        self.deleted.append(instance_id)
        self.passing.get(service, set()).discard(instance_id)


def make(tmp_path: Path) -> tuple[Supervisor, FakeRegistry, io.StringIO]:
    terminal = io.StringIO()
    registry = FakeRegistry()
    supervisor = Supervisor(
        LogHub(tmp_path / "logs", terminal=terminal, colour=False),
        registry,
        backoff=Backoff(initial=0.05, cap=0.2),
        drain=0.05,
    )
    return supervisor, registry, terminal


def spec(name: str, code: str, **kwargs: object) -> ProcessSpec:
    return ProcessSpec(
        service=name,
        argv=(PY, "-c", code),
        cwd=Path.cwd(),
        sdk_env={"CROSSWAY_URL": "http://127.0.0.1:9"},
        **kwargs,  # type: ignore[arg-type]
    )


async def until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_output_is_prefixed_and_the_environment_is_set(tmp_path: Path) -> None:
    supervisor, _, terminal = make(tmp_path)
    code = (
        "import os; print(os.environ['CROSSWAY_INSTANCE_ID'], os.environ['PORT'], "
        "os.environ['CROSSWAY_URL'], os.environ['GREETING'], flush=True)"
    )
    supervisor.add(
        spec("echo", code, listen=True, restart="never", env={"GREETING": "hi-${REPLICA}"})
    )
    await until(lambda: supervisor.processes("echo")[0]["state"] == "stopped")
    line = next(line for line in terminal.getvalue().splitlines() if line.startswith("echo.1"))
    instance, port, url, greeting = line.split(" | ")[1].split()
    assert (instance, url, greeting) == ("echo-1", "http://127.0.0.1:9", "hi-1")
    assert int(port) > 0
    await supervisor.stop_all()


async def test_a_crashing_replica_is_restarted_with_backoff_and_new_ids(tmp_path: Path) -> None:
    supervisor, registry, terminal = make(tmp_path)
    supervisor.add(spec("crash", "import sys; sys.exit(3)", listen=False))
    await until(lambda: supervisor.processes("crash")[0]["restarts"] >= 3)
    row = supervisor.processes("crash")[0]
    assert row["last_exit"]["code"] == 3
    assert row["instance_id"].startswith("crash-1-")
    assert registry.deleted[:2] == ["crash-1", "crash-1-2"]  # each dead id leaves the registry
    assert "crash.1 exited with code 3; restarting in 0.05s" in terminal.getvalue()
    assert "crash.1 exited with code 3; restarting in 0.1s" in terminal.getvalue()
    await supervisor.stop_all()
    assert supervisor.processes("crash") == []


async def test_a_missing_command_is_reported_once_and_shown_crashed(tmp_path: Path) -> None:
    supervisor, _, terminal = make(tmp_path)
    supervisor.add(ProcessSpec(service="ghost", argv=("no-such-command-anywhere",), cwd=Path.cwd()))
    await until(lambda: supervisor.processes("ghost")[0]["restarts"] >= 3)
    assert supervisor.processes("ghost")[0]["state"] == "crashed"
    assert terminal.getvalue().count("command not found") == 1
    await supervisor.stop_all()


async def test_health_gates_readiness_and_scale_stops_the_highest(tmp_path: Path) -> None:
    supervisor, registry, _ = make(tmp_path)
    health = HealthSpec(http="/", interval=0.2, start_period=10)
    web = ProcessSpec(
        service="web",
        argv=(PY, "-m", "http.server", "${PORT}", "--bind", "127.0.0.1"),
        cwd=tmp_path,
        replicas=2,
        health=health,
        stop_grace=2.0,
        sdk_env={"CROSSWAY_URL": "http://127.0.0.1:9"},
    )
    supervisor.add(web)
    assert await supervisor.wait_healthy("web", 15)
    rows = await supervisor.scale("web", 3)
    assert [r["replica"] for r in rows] == [1, 2, 3]
    assert await supervisor.wait_healthy("web", 15)
    third_pid = supervisor.processes("web")[2]["pid"]
    rows = await supervisor.scale("web", 1)
    assert [r["replica"] for r in rows] == [1]
    assert {"web-2", "web-3"} <= set(registry.deleted)  # left the registry before SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(third_pid, 0)
    await supervisor.stop_all()


async def test_stop_all_kills_what_ignores_sigterm_and_the_whole_group(tmp_path: Path) -> None:
    supervisor, _, _ = make(tmp_path)
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(child.pid, flush=True); time.sleep(60)"
    )
    supervisor.add(spec("stubborn", code, listen=False, stop_grace=0.5))
    logs = supervisor.logs
    await until(lambda: logs.tail("stubborn", 1) != [])
    grandchild = int(logs.tail("stubborn", 1)[0].split(" | ")[1])
    parent = supervisor.processes("stubborn")[0]["pid"]
    started = time.monotonic()
    await supervisor.stop_all()
    assert time.monotonic() - started < 5
    for pid in (parent, grandchild):
        await until(lambda pid=pid: not _alive(pid), timeout=5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie not yet reaped by its parent counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except OSError:
        return False
