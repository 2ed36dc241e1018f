"""Run a private, throwaway etcd on free loopback ports.

Used by the test suite and the benchmarks; also handy for a user's own
integration tests of code that runs against `--store etcd`.

`EtcdProcess.halt()` stops the server but keeps its data directory and ports,
and `resume()` starts it again on both, so a test can take etcd away from its
clients and give it back with every key and revision intact.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class EtcdProcess:
    endpoint: str
    process: subprocess.Popen[bytes]
    data_dir: str
    args: list[str] = field(default_factory=list)

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def halt(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10s), keeping its data."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    def resume(self, *, timeout: float = 20.0) -> None:
        """Start a halted server again on the same data directory and ports."""
        if self.process.poll() is None:
            return
        self.process = _spawn(self.args)
        _wait_healthy(self, timeout)


def start_etcd(*, timeout: float = 20.0, unsafe_no_fsync: bool = False) -> EtcdProcess:
    """Start etcd on free loopback ports and wait until it answers /health."""
    binary = etcd_binary()
    if binary is None:
        raise RuntimeError("etcd is not installed (scripts/ensure-etcd installs it)")
    data_dir = tempfile.mkdtemp(prefix="crossway-etcd-")
    client, peer = _free_port(), _free_port()
    endpoint = f"http://127.0.0.1:{client}"
    args = [
        binary,
        "--name=test",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={endpoint}",
        f"--advertise-client-urls={endpoint}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=test=http://127.0.0.1:{peer}",
        "--log-level=error",
        "--logger=zap",
    ]
    if unsafe_no_fsync:
        args.append("--unsafe-no-fsync")
    etcd = EtcdProcess(endpoint, _spawn(args), data_dir, args)
    try:
        _wait_healthy(etcd, timeout)
    except RuntimeError:
        etcd.stop()
        raise
    return etcd


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
    return subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
    )


def _wait_healthy(etcd: EtcdProcess, timeout: float) -> None:
    process = etcd.process
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"etcd exited at start: {err[-2000:]}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{etcd.endpoint}/health", timeout=1) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"etcd did not become healthy within {timeout}s")


@contextlib.contextmanager
def running_etcd() -> Iterator[EtcdProcess]:
    etcd = start_etcd()
    try:
        yield etcd
    finally:
        etcd.stop()
