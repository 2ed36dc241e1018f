"""Run a private, throwaway etcd on free loopback ports.

Used by the test suite and the benchmarks; also handy for a user's own
integration tests of code that runs against `--store etcd`.
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
from dataclasses import dataclass


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

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


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
    env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
    )
    etcd = EtcdProcess(endpoint, process, data_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            etcd.stop()
            raise RuntimeError(f"etcd exited at start: {err[-2000:]}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(f"{endpoint}/health", timeout=1) as resp:
                if resp.status == 200:
                    return etcd
        time.sleep(0.1)
    etcd.stop()
    raise RuntimeError(f"etcd did not become healthy within {timeout}s")


@contextlib.contextmanager
def running_etcd() -> Iterator[EtcdProcess]:
    etcd = start_etcd()
    try:
        yield etcd
    finally:
        etcd.stop()
