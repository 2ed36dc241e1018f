"""Run a real `crossway server` process on a free loopback port.

For integration tests (ours and a user's): the process logs to a file, not a
pipe, so a chatty server can never block on a full pipe.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx2

from crossway.testing.services import free_port


@dataclass
class CrosswayServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


_TEMPORARY: list[Path] = []


def _temporary_dir() -> Path:
    # Removed when the test process exits, not on stop(): a test may stop a
    # server and start another on the same data.
    if not _TEMPORARY:
        atexit.register(_remove_temporary)
    path = Path(tempfile.mkdtemp(prefix="crossway-server-"))
    _TEMPORARY.append(path)
    return path


def _remove_temporary() -> None:
    for path in _TEMPORARY:
        shutil.rmtree(path, ignore_errors=True)


def start_server(
    *,
    store: str = "sqlite",
    etcd_endpoints: Sequence[str] = (),
    data_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    port: int | None = None,
) -> CrosswayServer:
    """Start `crossway server` and wait until `/readyz` answers 200.

    `port` (default: a free one) lets a test restart a server where its
    clients expect it, e.g. `start_server(data_dir=old.data_dir, port=old.port)`.
    """
    port = port or free_port()
    data = data_dir or _temporary_dir()
    log_path = data / "server.log"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "crossway.cli.main",
        "server",
        "--port",
        str(port),
        "--store",
        store,
        "--data-dir",
        str(data),
        "--log-format",
        "json",
        *extra_args,
    ]
    if etcd_endpoints:
        argv += ["--etcd-endpoints", ",".join(etcd_endpoints)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CROSSWAY_")}
    environment.update(env or {})
    with log_path.open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=log, env=environment)
    server = CrosswayServer(f"http://127.0.0.1:{port}", process, log_path, data)
    _wait_ready(server, timeout)
    return server


def _wait_ready(server: CrosswayServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"crossway server exited at start: {server.log()[-2000:]}")
        with contextlib.suppress(httpx2.TransportError):
            if httpx2.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"crossway server not ready within {timeout}s: {server.log()[-2000:]}")


@contextlib.contextmanager
def running_server(**kwargs: object) -> Iterator[CrosswayServer]:
    server = start_server(**kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


_shared: dict[str, CrosswayServer] = {}


def shared_server(store: str = "memory") -> CrosswayServer:
    """One server per store for the whole test process, stopped when it exits.

    For test modules that only need *a* control plane (each using names of
    its own): starting a server costs seconds, so many modules share one. A
    test that stops or restarts its server must start its own instead.
    """
    server = _shared.get(store)
    if server is None or server.process.poll() is not None:
        server = _shared[store] = start_server(store=store)
        atexit.register(server.stop)
    return server
