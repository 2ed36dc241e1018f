"""`crossway up` as a real process: tiny SDK services on free ports, driven by the CLI.

The module's `up` runs for all the tests that only look and steer (ps, a
killed replica, scale, a rolling restart under traffic, logs, a second `up`);
the tests of start-up failures and of Ctrl-C run their own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from crossway.testing.services import free_port, port_open

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TINY = Path(__file__).with_name("tiny_service.py")
CLI = [sys.executable, "-m", "crossway.cli.main"]


@dataclass
class Up:
    folder: Path
    process: subprocess.Popen[bytes]
    control: int
    gateway: int
    admin: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.control}"

    def output(self) -> str:
        return (self.folder / "up.out").read_text(errors="replace")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args, "--url", self.url], capture_output=True, text=True, timeout=30
        )

    def processes(self, service: str | None = None) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/v1/processes", timeout=5).json()
        rows: list[dict[str, Any]] = body["processes"]
        return [r for r in rows if service is None or r["service"] == service]

    def passing(self, service: str) -> set[str]:
        found = httpx.get(f"{self.url}/v1/services/{service}", timeout=5).json()
        return {i["id"] for i in found if i["status"] == "passing"}


def write_file(folder: Path, services: str, *, control: int, gateway: int, admin: int) -> Path:
    file = folder / "crossway.yaml"
    file.write_text(
        "version: 1\n"
        "name: tiny\n"
        f"control_plane: {{port: {control}}}\n"
        f"gateway: {{port: {gateway}, admin_port: {admin}}}\n"
        "services:\n"
        f"{services}"
        "routes:\n"
        "  tiny:\n"
        "    match: {path_prefix: /}\n"
        "    backends: [{service: tiny}]\n"
        "    retries: {attempts: 3}\n"
        "config:\n"
        "  - {group: tiny, key: hello.yaml, content: 'greeting: hi'}\n"
    )
    return file


TINY_SERVICE = (
    "  tiny:\n"
    f"    command: [python, {json.dumps(str(TINY))}]\n"
    "    replicas: 2\n"
    "    health: {http: /healthz, interval: 500ms}\n"
    "    stop_grace: 5s\n"
)


def start_up(folder: Path, services: str = TINY_SERVICE) -> Up:
    control, gateway, admin = free_port(), free_port(), free_port()
    file = write_file(folder, services, control=control, gateway=gateway, admin=admin)
    out = open(folder / "up.out", "wb")  # noqa: SIM115 - the child writes to it
    process = subprocess.Popen(
        [*CLI, "up", "-f", str(file)], stdout=out, stderr=subprocess.STDOUT, cwd=folder
    )
    out.close()
    return Up(folder, process, control, gateway, admin)


def wait_for(what: str, check: Callable[[], bool], up: Up, timeout: float = 25.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if up.process.poll() is not None:
            pytest.fail(f"crossway up exited ({up.process.returncode}):\n{up.output()}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{up.output()[-3000:]}")


def all_healthy(up: Up, service: str, count: int) -> bool:
    rows = up.processes(service)
    return len(rows) == count and all(r["state"] == "healthy" for r in rows)


def stop_up(up: Up) -> int:
    if up.process.poll() is None:
        up.process.send_signal(signal.SIGINT)
        try:
            return up.process.wait(30)
        except subprocess.TimeoutExpired:
            up.process.kill()
            up.process.wait(5)
    return up.process.returncode


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    broken = "  broken:\n    command: no-such-command-for-crossway-up\n"
    running = start_up(tmp_path_factory.mktemp("up"), TINY_SERVICE + broken)
    try:
        wait_for("tiny to be healthy", lambda: all_healthy(running, "tiny", 2), running)
        wait_for(
            "the gateway",
            lambda: httpx.get(f"http://127.0.0.1:{running.gateway}/", timeout=2).status_code == 200,
            running,
        )
        yield running
    finally:
        stop_up(running)


def test_ps_shows_the_processes_healthy_and_a_missing_command_crashed(up: Up) -> None:
    result = up.cli("ps")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["SERVICE", "REPLICA", "INSTANCE"]
    tiny = [line.split() for line in lines if line.split()[:1] == ["tiny"]]
    assert [row[5] for row in tiny] == ["healthy", "healthy"]
    assert any(line.split()[:1] == ["gateway"] and "healthy" in line for line in lines)
    broken = up.processes("broken")
    assert broken[0]["state"] == "crashed"
    assert broken[0]["last_exit"]["code"] == 127
    assert up.output().count("command not found") == 1
    assert json.loads(up.cli("ps", "--json").stdout)["project"] == "tiny"


def test_a_killed_replica_is_restarted_with_a_new_instance_id(up: Up) -> None:
    first = up.processes("tiny")[0]
    os.kill(first["pid"], signal.SIGKILL)

    def restarted() -> bool:
        row = up.processes("tiny")[0]
        return row["restarts"] == 1 and row["state"] == "healthy"

    wait_for("the replica's restart", restarted, up)
    row = up.processes("tiny")[0]
    assert row["instance_id"] == f"{first['instance_id']}-2"
    assert row["last_exit"]["code"] == -signal.SIGKILL
    assert row["pid"] != first["pid"]
    assert "tiny.1 was killed by SIGKILL; restarting in 1s" in up.output()
    wait_for(
        "the old instance to leave the registry",
        lambda: first["instance_id"] not in up.passing("tiny"),
        up,
    )


def test_scale_up_registers_replicas_and_scale_down_stops_the_highest(up: Up) -> None:
    result = up.cli("scale", "tiny", "3")
    assert result.returncode == 0, result.stderr
    assert "tiny: 3 replica(s)" in result.stdout

    def three_registered() -> bool:
        ids = {r["instance_id"] for r in up.processes("tiny")}
        return len(ids) == 3 and up.passing("tiny") == ids

    wait_for("3 registered replicas", three_registered, up)
    assert up.cli("scale", "tiny", "2").returncode == 0
    assert [r["replica"] for r in up.processes("tiny")] == [1, 2]
    wait_for("replica 3 to leave the registry", lambda: "tiny-3" not in up.passing("tiny"), up)
    bad = up.cli("scale", "nope", "2")
    assert bad.returncode == 1
    assert "no process named 'nope'" in bad.stderr


def test_a_rolling_restart_fails_no_request_through_the_gateway(up: Up) -> None:
    before = {r["instance_id"] for r in up.processes("tiny")}
    result = up.cli("restart", "tiny")
    assert result.returncode == 0, result.stderr
    failures, answered, served_by, errors = 0, 0, set(), []
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=f"http://127.0.0.1:{up.gateway}", timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get("/")
                ok = response.status_code == 200
                served_by.add(response.text.strip())
                if not ok:
                    errors.append(f"{response.status_code} {response.text[:200]}")
            except httpx.HTTPError as exc:
                ok = False
                errors.append(repr(exc))
            failures += not ok
            answered += 1
            if "rolling restart done" in up.output():
                break
            time.sleep(0.02)
    after = {r["instance_id"] for r in up.processes("tiny")}
    context = f"before={before} after={after} served_by={served_by}\n{up.output()[-4000:]}"
    assert "rolling restart done" in up.output(), context
    assert failures == 0, f"{failures} of {answered} requests failed; {errors}\n{context}"
    assert answered > 20
    assert len(after) == 2, context
    assert not after & before, context
    assert any(name.endswith(tuple(after)) for name in served_by), context


def test_logs_prints_the_last_lines(up: Up) -> None:
    result = up.cli("logs", "tiny", "--tail", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert 1 <= len(lines) <= 5
    assert all(line.split(" | ")[0] in {"1", "2", "3", "crossway"} for line in lines)
    assert (up.folder / ".crossway" / "logs" / "tiny.log").read_text().count(" | ") >= 2


def test_logs_follow_prints_new_lines_as_they_come(up: Up) -> None:
    follower = subprocess.Popen(
        [*CLI, "logs", "tiny", "-f", "--tail", "0", "--url", up.url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)  # the follower connects
        assert up.cli("scale", "tiny", "2").returncode == 0
        assert follower.stdout is not None
        line = follower.stdout.readline()  # bounded by the pytest timeout below
        assert line == "crossway | scaled to 2 replica(s)\n"
    finally:
        follower.terminate()
        follower.wait(10)


def test_a_second_up_in_the_same_folder_is_refused(up: Up) -> None:
    second = subprocess.run(
        [*CLI, "up", "-f", str(up.folder / "crossway.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    expected = (
        f"crossway up is already running here (pid {up.process.pid}, "
        f"control plane on :{up.control})"
    )
    assert expected in second.stderr


def test_sigint_stops_every_process_and_frees_every_port(tmp_path: Path) -> None:
    running = start_up(tmp_path)
    try:
        wait_for("tiny to be healthy", lambda: all_healthy(running, "tiny", 2), running)
        rows = running.processes()
        pids = [r["pid"] for r in rows]
        ports = [running.control, running.gateway, running.admin, *(r["port"] for r in rows)]
        assert len(pids) == 3
    finally:
        code = stop_up(running)
    assert code == 0, running.output()
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert [port for port in ports if port_open("127.0.0.1", port)] == []
    assert "stopped" in running.output().splitlines()[-1]


def test_a_port_in_use_is_named_and_nothing_starts(tmp_path: Path) -> None:
    import socket

    running = start_up(tmp_path, TINY_SERVICE)
    running.process.kill()
    running.process.wait()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", running.gateway))
        sock.listen()
        result = subprocess.run(
            [*CLI, "up", "-f", str(tmp_path / "crossway.yaml")],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"port {running.gateway} (the gateway) is already in use" in result.stderr


def test_a_bad_file_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    file = tmp_path / "crossway.yaml"
    file.write_text("version: 1\nservices:\n  a:\n    command: x\n    replicas: 0\n    foo: 1\n")
    result = subprocess.run(
        [*CLI, "up", "-f", str(file)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{file}:5:15: services.a.replicas: must be >= 1",
        f"{file}:6:5: services.a.foo: unknown field",
    ]


def test_services_do_not_outlive_a_killed_up(tmp_path: Path) -> None:
    running = start_up(tmp_path)
    try:
        wait_for("tiny to be healthy", lambda: all_healthy(running, "tiny", 2), running)
        pids = [r["pid"] for r in running.processes()]
    finally:
        running.process.kill()  # SIGKILL: no chance to stop anything itself
        running.process.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(pid_alive(pid) for pid in pids):
        time.sleep(0.2)
    assert [pid for pid in pids if pid_alive(pid)] == []
