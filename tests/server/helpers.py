"""Test helpers: an in-process uvicorn on loopback, an SSE reader, a process runner."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import uvicorn
from starlette.applications import Starlette

from crossway.server.run import bind_socket


class _QuietServer(uvicorn.Server):
    """uvicorn that leaves the test process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def live_server(app: Starlette) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port in this event loop; yields its base URL."""
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = _QuietServer(config)
    with bind_socket("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task


@dataclass
class Frame:
    event: str | None = None
    id: str | None = None
    data: str | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


async def sse_frames(response: httpx2.Response) -> AsyncIterator[Frame]:
    """Parse a `text/event-stream` body into frames (a blank line ends one)."""
    frame = Frame()
    async for line in response.aiter_lines():
        if line == "":
            yield frame
            frame = Frame()
        elif line.startswith(":"):
            frame.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            setattr(frame, name, value.removeprefix(" "))


async def next_event(frames: AsyncIterator[Frame]) -> Frame:
    """The next frame that carries an event (comments skipped), within 5 s."""
    async with asyncio.timeout(5):
        async for frame in frames:
            if frame.event is not None:
                return frame
    raise AssertionError("the stream ended")


SERVER_CMD = [sys.executable, "-m", "crossway.cli.main", "server"]


@dataclass
class ServerProcess:
    """A `crossway server` child process on loopback."""

    process: subprocess.Popen[str]
    base_url: str
    stderr_lines: list[str] = field(default_factory=list)

    @classmethod
    def crossway(
        cls, args: Sequence[str], *, port: int, env: dict[str, str] | None = None
    ) -> ServerProcess:
        """`crossway server --port PORT --log-format json ARGS…`."""
        argv = [*SERVER_CMD, "--port", str(port), "--log-format", "json", *args]
        return cls.launch(argv, port=port, env=env)

    @classmethod
    def launch(
        cls, argv: Sequence[str], *, port: int, env: dict[str, str] | None = None
    ) -> ServerProcess:
        process = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(env),
        )
        return cls(process, f"http://127.0.0.1:{port}")

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}: {self.stderr()}")
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise AssertionError("server did not become healthy")

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        return self.process.wait(timeout)

    def stderr(self) -> str:
        if self.process.poll() is None:
            return ""
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def log_records(self) -> list[dict[str, Any]]:
        """Every stderr line as JSON (after exit); fails on a line that is not."""
        return [json.loads(line) for line in self.stderr().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_cli(
    args: Sequence[str], *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `crossway server …` to completion (for commands that fail fast)."""
    return subprocess.run(
        [*SERVER_CMD, *args], capture_output=True, text=True, env=clean_env(env), timeout=60
    )


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without CROSSWAY_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSWAY_")}
    env.update(extra or {})
    return env


TEST_ROUTES_SCRIPT = Path(__file__).resolve().parent / "serve_with_test_routes.py"
