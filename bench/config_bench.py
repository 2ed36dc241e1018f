"""Config push: 1,000 clients waiting on one key, beside etcd's own watch delivery.

One run, on this machine, over loopback. The control plane under test is a
subprocess (uvicorn on uvloop serving the config API and the SSE watch, as
`crossway server` does). The HTTP clients are spread over CLIENT_PROCESSES
client processes (250 each by default), so that parsing 1,000 responses in
one Python process is not what is measured:

  (a) long poll, sqlite store: 1,000 httpx2 clients, each with a connection of
      its own, wait on `GET /v1/config/bench/DEFAULT_GROUP/app.yaml?index=N&wait=30s`;
  (b) long poll on an etcd store (a private etcd started here), minimal clients;
  (c) SSE watch, sqlite store: 1,000 httpx2 streams of `/v1/watch?prefix=<the key>`;
  (d) etcd itself: 1,000 watchers of one key through aetcd over WATCH_CHANNELS
      gRPC channels in this process, the value put straight into etcd;
  (e) long poll, sqlite store, with minimal raw-socket HTTP/1.1 clients: the
      server's own push time, without httpx2's per-response cost.

Each round: wait until every client is parked, take the wall clock
(`time.time()`) just before the write (`PUT` over HTTP; an etcd put for d);
each client notes the wall clock when it holds the new value, in whichever
process it lives. "last" is the time until the LAST client holds it — what a
config push is judged by — as p50/p99 over the rounds; "each" is p50/p99
over every (round, client) pair. ROUNDS rounds after a warm-up, each capped at
ROUND_CAP seconds; rows that would run past TOTAL_CAP are skipped and said so.

Caveats, stated rather than hidden: the clients and the server share this
machine's cores with whatever else runs on it, so the figures move from run
to run; the clients' own work (parsing the responses) is inside every row,
spread over the client processes, as decoding 1,000 watch events is inside
(d). "cli cpu" sums the CPU of every client process over a round.
Target: (a) p99 of "last" <= 200 ms (Apollo documents about 1 s).
Numbers, not a test: nothing fails on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import httpx2
import msgspec

from crossway.testing.etcd import EtcdProcess, etcd_binary, start_etcd
from crossway.testing.services import free_port, port_open

T = TypeVar("T")
CLIENTS = 1_000
ROUNDS = 6
CLIENT_PROCESSES = int(os.environ.get("CONFIG_BENCH_CLIENT_PROCESSES", "4"))
ROUND_CAP = 10.0
SETTLE = 0.3
TOTAL_CAP = 95.0
WATCH_CHANNELS = 20
PATH = "/v1/config/bench/DEFAULT_GROUP/app.yaml"
ENTRY_KEY = "/config/bench/DEFAULT_GROUP/app.yaml"
TARGET_MS = 200.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Result:
    name: str
    last_ms: list[float] = field(default_factory=list)
    each_ms: list[float] = field(default_factory=list)
    missed: int = 0
    note: str = ""
    server_cpu_ms: list[float] = field(default_factory=list)
    client_cpu_ms: list[float] = field(default_factory=list)

    def row(self) -> str:
        if self.note:
            return f"{self.name:<60} {self.note}"
        cells = [_pct(self.last_ms, 50), _pct(self.last_ms, 99)]
        cells += [_pct(self.each_ms, 50), _pct(self.each_ms, 99)]
        cells += [_mean(self.server_cpu_ms), _mean(self.client_cpu_ms)]
        return f"{self.name:<60} " + " ".join(f"{c:>8.0f}" for c in cells) + f" {self.missed:>7}"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _pct(values: list[float], p: int) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Client(Protocol):
    arrived: dict[str, float]
    """Content -> when this client first held it (time.time(), comparable
    across processes)."""
    parked: asyncio.Event

    async def run(self) -> None: ...

    async def aclose(self) -> None: ...


# The control plane under test, as a subprocess.


@dataclass(frozen=True)
class Plane:
    url: str
    pid: int

    def cpu(self) -> float:
        """Seconds of CPU the server process has used (user + system)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(port: int, store_kind: str, where: str) -> None:
    """Entry point of the server subprocess."""
    import uvicorn

    from crossway.server.api import config as config_api
    from crossway.server.api import system, watch
    from crossway.server.app import create_app
    from crossway.server.context import ServerContext
    from crossway.store import open_store

    async def run() -> None:
        endpoints = (where,) if store_kind == "etcd" else ()
        store = await open_store(store_kind, data_dir=where, etcd_endpoints=endpoints)
        ctx = ServerContext(store=store)
        app = create_app(ctx, providers=(system.routes, watch.routes, config_api.routes))
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            http="httptools",
            ws="none",
            log_level="warning",
            access_log=False,
            server_header=False,
            backlog=4096,
        )
        await uvicorn.Server(config).serve()

    _run_on_uvloop(run)


def _run_on_uvloop(main: Callable[[], Awaitable[T]]) -> T:
    """As `crossway server` runs: on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(main())  # type: ignore[arg-type]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())  # type: ignore[arg-type]


@contextlib.contextmanager
def control_plane(store_kind: str, where: str) -> Iterator[Plane]:
    port = free_port()
    code = f"from bench.config_bench import serve; serve({port}, {store_kind!r}, {where!r})"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the control plane did not start")
            time.sleep(0.05)
        yield Plane(f"http://127.0.0.1:{port}", process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# The clients.


class LongPoller:
    """An httpx2 client of its own (one connection), as each service instance has."""

    def __init__(self, url: str, index: int, ssl: object) -> None:
        # One shared SSL context: building one per client costs ~40 ms each.
        self.http = httpx2.AsyncClient(base_url=url, timeout=60.0, verify=ssl)  # type: ignore[arg-type]
        self.index = index
        self.arrived: dict[str, float] = {}
        self.parked = asyncio.Event()
        self.reconnects = 0

    async def run(self) -> None:
        while True:
            self.parked.set()
            try:
                response = await self.http.get(PATH, params={"index": self.index, "wait": "30s"})
            except httpx2.TransportError:
                # The server closes a keep-alive connection idle for 5 s; a
                # client too busy to ask again in time reconnects, as real ones do.
                self.reconnects += 1
                continue
            now = time.time()
            self.parked.clear()
            self.arrived.setdefault(response.text, now)
            self.index = int(response.headers["x-crossway-index"])

    async def aclose(self) -> None:
        await self.http.aclose()


class Entry(msgspec.Struct):
    release: dict[str, object] | None = None


class SseWatcher:
    """Follows the entry's key through `GET /v1/watch` (Server-Sent Events)."""

    def __init__(self, url: str, index: int, ssl: object) -> None:
        self.http = httpx2.AsyncClient(base_url=url, timeout=60.0, verify=ssl)  # type: ignore[arg-type]
        self.index = index
        self.arrived: dict[str, float] = {}
        self.parked = asyncio.Event()

    async def run(self) -> None:
        params = {"prefix": ENTRY_KEY, "after": str(self.index)}
        async with self.http.stream("GET", "/v1/watch", params=params) as stream:
            self.parked.set()
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    self._take(line[6:], time.time())

    def _take(self, data: str, now: float) -> None:
        event = msgspec.json.decode(data)
        release = msgspec.json.decode(event["value"], type=Entry).release or {}
        self.arrived.setdefault(str(release.get("content")), now)

    async def aclose(self) -> None:
        await self.http.aclose()


class RawPoller:
    """The least an HTTP/1.1 long-poll client can do: write a request, read
    the head and the body off one keep-alive socket."""

    def __init__(self, url: str, index: int, ssl: object) -> None:
        self.port = int(url.rsplit(":", 1)[1])
        self.index = index
        self.arrived: dict[str, float] = {}
        self.parked = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        while True:
            request = f"GET {PATH}?index={self.index}&wait=30s HTTP/1.1\r\nHost: bench\r\n\r\n"
            self.writer.write(request.encode())
            self.parked.set()
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(
                line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
            )
            body = await reader.readexactly(int(fields["content-length"]))
            now = time.time()
            self.parked.clear()
            self.arrived.setdefault(body.decode(), now)
            self.index = int(fields["x-crossway-index"])

    async def aclose(self) -> None:
        if self.writer is not None:
            self.writer.close()


class EtcdWatcher:
    def __init__(self, client: object, key: bytes) -> None:
        self.client = client
        self.key = key
        self.arrived: dict[str, float] = {}
        self.parked = asyncio.Event()

    async def run(self) -> None:
        watch = await self.client.watch(self.key)  # type: ignore[attr-defined]
        self.parked.set()
        async for event in watch:
            self.arrived.setdefault(event.kv.value.decode(), time.time())

    async def aclose(self) -> None:
        return None


# Fleets: the clients of one row, in this process or spread over several.


class Fleet(Protocol):
    async def park(self) -> None:
        """Return once every client has its request (or stream) in flight."""

    async def collect(self, body: str) -> tuple[list[float], float]:
        """When each client that got `body` within ROUND_CAP got it
        (time.time()), and the clients' CPU ms since `park` returned."""

    async def aclose(self) -> None: ...


class LocalFleet:
    """Clients running as tasks of this process."""

    def __init__(self, clients: list[Client]) -> None:
        self.clients = clients
        self.tasks = [asyncio.create_task(c.run()) for c in clients]
        self._cpu = 0.0

    async def park(self) -> None:
        parked = (c.parked.wait() for c in self.clients)
        await asyncio.wait_for(asyncio.gather(*parked), ROUND_CAP)
        failed = [t for t in self.tasks if t.done()]
        if failed:
            raise RuntimeError(f"{len(failed)} clients failed: {failed[0].exception()!r}")
        self._cpu = time.process_time()

    async def collect(self, body: str) -> tuple[list[float], float]:
        deadline = time.monotonic() + ROUND_CAP
        while any(body not in c.arrived for c in self.clients) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        arrived = [c.arrived[body] for c in self.clients if body in c.arrived]
        return arrived, (time.process_time() - self._cpu) * 1000

    async def aclose(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for client in self.clients:
            await client.aclose()

    def reconnects(self) -> int:
        return sum(getattr(c, "reconnects", 0) for c in self.clients)


class Reply(msgspec.Struct):
    """A client process's answer to one command."""

    arrived: list[float] = []
    cpu_ms: float = 0.0
    reconnects: int = 0
    error: str | None = None


class ProcessFleet:
    """`count` clients of one kind in each of `processes` subprocesses, driven
    over their stdin/stdout one JSON line at a time (see `client_process`)."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self.processes = processes
        self.reconnect_count = 0

    @classmethod
    async def start(
        cls, kind: str, url: str, index: int, total: int, processes: int
    ) -> ProcessFleet:
        started = []
        for i in range(processes):
            count = total // processes + (1 if i < total % processes else 0)
            call = f"client_process({kind!r}, {url!r}, {index}, {count})"
            code = f"from bench.config_bench import client_process; {call}"
            started.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    code,
                    cwd=ROOT,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        return cls(started)

    async def _ask(self, command: dict[str, object]) -> list[Reply]:
        line = json.dumps(command).encode() + b"\n"
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(line)

        async def answer(process: asyncio.subprocess.Process) -> Reply:
            assert process.stdout is not None
            raw = await asyncio.wait_for(process.stdout.readline(), ROUND_CAP + 30)
            if not raw:
                raise RuntimeError(
                    f"client process {process.pid} ended (exit {process.returncode})"
                )
            reply = msgspec.json.decode(raw, type=Reply)
            if reply.error is not None:
                raise RuntimeError(f"client process {process.pid}: {reply.error}")
            return reply

        return list(await asyncio.gather(*(answer(p) for p in self.processes)))

    async def park(self) -> None:
        await self._ask({"park": True})

    async def collect(self, body: str) -> tuple[list[float], float]:
        replies = await self._ask({"collect": body})
        self.reconnect_count = sum(r.reconnects for r in replies)
        return [t for r in replies for t in r.arrived], sum(r.cpu_ms for r in replies)

    async def aclose(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.kill()
            await process.wait()

    def reconnects(self) -> int:
        return self.reconnect_count


def client_process(kind: str, url: str, index: int, count: int) -> None:
    """Entry point of a client subprocess: `count` clients of `kind`, and a
    loop answering the driver's JSON lines on stdin with JSON lines on stdout."""
    _run_on_uvloop(lambda: _drive_clients(kind, url, index, count))


async def _drive_clients(kind: str, url: str, index: int, count: int) -> None:
    ssl = httpx2.create_ssl_context()
    kinds: dict[str, type[LongPoller | SseWatcher | RawPoller]] = {
        "httpx2": LongPoller,
        "sse": SseWatcher,
        "raw": RawPoller,
    }
    clients: list[Client] = [kinds[kind](url, index, ssl) for _ in range(count)]
    fleet = LocalFleet(clients)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    try:
        while line := await commands.readline():
            command = json.loads(line)
            try:
                if "park" in command:
                    await fleet.park()
                    reply = Reply()
                else:
                    arrived, cpu_ms = await fleet.collect(command["collect"])
                    reply = Reply(arrived, cpu_ms, fleet.reconnects())
            except Exception as exc:
                reply = Reply(error=repr(exc)[:200])
            sys.stdout.buffer.write(msgspec.json.encode(reply) + b"\n")
            sys.stdout.flush()
    finally:
        await fleet.aclose()


# Rounds.


async def measure(
    name: str,
    fleet: Fleet,
    size: int,
    write: Callable[[bytes], Awaitable[object]],
    server_cpu: Callable[[], float] | None = None,
) -> Result:
    result = Result(name)
    try:
        for n in range(ROUNDS + 1):
            await _round(n, fleet, size, write, result, server_cpu)
    finally:
        await fleet.aclose()
    return result


async def _round(
    n: int,
    fleet: Fleet,
    size: int,
    write: Callable[[bytes], Awaitable[object]],
    result: Result,
    server_cpu: Callable[[], float] | None,
) -> None:
    await fleet.park()
    await asyncio.sleep(SETTLE)  # let every request reach the server and park there
    body = f"round: {n}\n"
    cpu = server_cpu() if server_cpu else 0.0
    start = time.time()
    await write(body.encode())
    arrived, client_cpu_ms = await fleet.collect(body)
    if n == 0:
        return  # warm-up
    times = [(t - start) * 1000 for t in arrived]
    result.client_cpu_ms.append(client_cpu_ms)
    if server_cpu is not None:
        result.server_cpu_ms.append((server_cpu() - cpu) * 1000)
    result.missed += size - len(times)
    result.each_ms += times
    if times:
        result.last_ms.append(max(times))


async def over_http(name: str, plane: Plane, kind: str) -> Result:
    async with httpx2.AsyncClient(base_url=plane.url) as writer:
        first = await writer.put(PATH, content=b"round: -1\n")
        index = int(first.json()["revision"])
        fleet = await ProcessFleet.start(kind, plane.url, index, CLIENTS, CLIENT_PROCESSES)

        def write(body: bytes) -> Awaitable[object]:
            return writer.put(PATH, content=body)

        result = await measure(name, fleet, CLIENTS, write, plane.cpu)
        result.name += f", {CLIENT_PROCESSES} client processes"
        if fleet.reconnects():
            result.name += f" ({fleet.reconnects()} reconnects)"
        return result


async def etcd_watch(endpoint: str) -> Result:
    import aetcd

    host, port = endpoint.removeprefix("http://").rsplit(":", 1)
    channels = [aetcd.Client(host=host, port=int(port)) for _ in range(WATCH_CHANNELS)]
    key = b"/bench/etcd-watch"
    try:
        clients: list[Client] = [
            EtcdWatcher(channels[i % WATCH_CHANNELS], key) for i in range(CLIENTS)
        ]
        name = f"(d) etcd watch, aetcd, {WATCH_CHANNELS} channels"
        fleet = LocalFleet(clients)
        return await measure(name, fleet, CLIENTS, lambda body: channels[0].put(key, body))
    finally:
        for channel in channels:
            await channel.close()


# The run.


async def _run_all(etcd: EtcdProcess | None) -> list[Result]:
    started = time.monotonic()
    results: list[Result] = []

    async def row(name: str, run: Callable[[str], Awaitable[Result]]) -> None:
        if time.monotonic() - started > TOTAL_CAP:
            results.append(Result(name, note=f"skipped: the {TOTAL_CAP:.0f} s cap was reached"))
            return
        try:
            results.append(await run(name))
        except Exception as exc:
            results.append(Result(name, note=f"failed: {exc!r}"[:120]))

    with (
        tempfile.TemporaryDirectory(prefix="crossway-config-bench-") as data,
        control_plane("sqlite", data) as plane,
    ):
        await row("(a) long poll, sqlite, httpx2", lambda n: over_http(n, plane, "httpx2"))
        await row("(c) SSE watch, sqlite, httpx2", lambda n: over_http(n, plane, "sse"))
        await row("(e) long poll, sqlite, raw clients", lambda n: over_http(n, plane, "raw"))
    if etcd is None:
        results.append(Result("(b), (d)", note="skipped: etcd is not installed"))
        return results
    with control_plane("etcd", etcd.endpoint) as plane:
        await row("(b) long poll, etcd store, raw clients", lambda n: over_http(n, plane, "raw"))
    await row("(d) etcd watch", lambda n: etcd_watch(etcd.endpoint))
    return results


def main() -> None:
    load_before = os.getloadavg()[0]
    etcd = start_etcd() if etcd_binary() is not None else None
    try:
        results = _run_on_uvloop(lambda: _run_all(etcd))
    finally:
        if etcd is not None:
            etcd.stop()
    print(
        f"config push to {CLIENTS} waiting clients: {ROUNDS} rounds, loopback, "
        f"{os.cpu_count()} CPUs shared by server, clients and the rest of the machine "
        f"(1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)"
    )
    print("times in ms; cpu = CPU ms per push in the server process / in all client processes")
    head = ["last p50", "last p99", "each p50", "each p99", "srv cpu", "cli cpu"]
    print(f"{'':<60} " + " ".join(f"{h:>8}" for h in head) + f" {'missed':>7}")
    for result in sorted(results, key=lambda r: r.name):
        print(result.row())
    _summary({r.name[:3]: r for r in results})


def _summary(rows: dict[str, Result]) -> None:
    for label in ("(a)", "(b)", "(c)", "(e)"):
        row = rows.get(label)
        if row is not None and row.last_ms:
            verdict = "met" if _pct(row.last_ms, 99) <= TARGET_MS else "NOT met"
            print(f"target last p99 <= {TARGET_MS:.0f} ms, {row.name}: {verdict}")
    etcd = rows.get("(d)")
    if etcd is None or not etcd.last_ms:
        return
    for label in ("(a)", "(b)", "(c)", "(e)"):
        row = rows.get(label)
        if row is not None and row.last_ms:
            ratio = _pct(row.last_ms, 99) / _pct(etcd.last_ms, 99)
            print(f"ratio {row.name} / etcd watch, last p99: {ratio:.2f}x")


if __name__ == "__main__":
    main()
