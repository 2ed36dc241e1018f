"""The registry bench's clients and workloads: measurements, a minimal HTTP/1.1
client, the population and its background renewer, load from wrk, the uvicorn
floor, and keepalive streams (`POST /v1/leases/keepalive/stream`).

See `bench/registry_bench.py` for what the run does with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import msgspec

from crossway.testing.services import free_port

# REGISTRY_BENCH_SERVICES=100 runs the same phases on a tenth of the population.
SERVICES, PER_SERVICE = int(os.environ.get("REGISTRY_BENCH_SERVICES", "1000")), 100
SMALL_SERVICES, PER_SMALL = 5, 3
TTL = "30s"
REGISTER_CONNECTIONS = 64
POPULATE_CAP = 100.0  # seconds; a slow server is reported with what it managed
RENEW_EVERY, BATCH = 10.0, 500
WRK_CONNECTIONS, WRK_SECONDS, WRK_RUNS = 64, 3, 3
WATCHERS, WATCHED, ROUNDS, ROUND_TIMEOUT = 1_000, 4, 20, 2.0
STREAMS, STREAM_CHUNK, STREAM_WINDOW, FLEET_TICK = 50, 200, 1_000, 0.05
ETCD_LEASES, ETCD_STREAMS, ETCD_WINDOW, ETCD_SECONDS = 10_000, 8, 256, 6.0
NACOS_REGISTER, NACOS_QUERY = 26_800 / 24, 30_700 / 24  # per core: 3 servers x 8 cores
TARGET_KEEPALIVES, TARGET_QUERIES, TARGET_P99_MS, TARGET_RSS_MB = 20_000, 10_000, 100.0, 500.0


# Measurements


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) used so far by process `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Rate:
    """`units` of work done in `seconds`, costing the server `cpu` CPU-seconds."""

    units: int
    seconds: float
    cpu: float
    errors: int = 0

    @property
    def per_second(self) -> float:
        return self.units / self.seconds if self.seconds > 0 else 0.0

    @property
    def per_core(self) -> float:
        return self.units / self.cpu if self.cpu > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.units * 1e6 if self.units else float("nan")


@dataclass
class Latency:
    samples: list[float] = field(default_factory=list)
    missed: int = 0
    watchers: int = 0

    def quantile_ms(self, q: float) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measured(pid: int, work: Callable[[], Awaitable[tuple[int, int]]]) -> Rate:
    """Run `work` (returns units done and errors) and charge it the CPU of `pid`."""
    cpu0, start = cpu_seconds(pid), time.perf_counter()
    units, errors = await work()
    return Rate(units, time.perf_counter() - start, cpu_seconds(pid) - cpu0, errors)


# A minimal HTTP/1.1 client: keep-alive, one request at a time, Content-Length bodies.


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, method: str, path: str, body: bytes = b"") -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(f"{head}Content-Type: application/json\r\n\r\n".encode() + body)

    async def answer(self) -> tuple[int, dict[bytes, bytes], bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = dict(_header(line) for line in lines[1:] if b":" in line)
        body = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        return int(lines[0].split()[1]), headers, body

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        self.send(method, path, body)
        status, _, answer = await self.answer()
        return status, answer

    def close(self) -> None:
        self.writer.close()


def _header(line: bytes) -> tuple[bytes, bytes]:
    name, _, value = line.partition(b":")
    return name.strip().lower(), value.strip()


# 1. Population and the background renewer


class Registered(msgspec.Struct):
    lease: str


def registration(service: str, index: int, mark: str = "0") -> bytes:
    return msgspec.json.encode(
        {
            "address": f"10.{index % 250}.{len(service)}.{index // 250 + 1}",
            "port": 8080,
            "zone": f"zone-{index % 3}",
            "tags": ["http", "v1"],
            "metadata": {"version": "1.4.2", "mark": mark},
            "ttl": TTL,
        }
    )


def population() -> list[tuple[str, int]]:
    big = [(f"svc-{s}", i) for s in range(SERVICES) for i in range(PER_SERVICE)]
    return big + [(f"small-{s}", i) for s in range(SMALL_SERVICES) for i in range(PER_SMALL)]


async def populate(port: int, leases: list[str]) -> tuple[int, int]:
    todo = iter(population())
    deadline = time.perf_counter() + POPULATE_CAP
    decoder = msgspec.json.Decoder(Registered)
    errors = 0

    async def worker() -> None:
        nonlocal errors
        conn = await Conn.open(port)
        try:
            for service, i in todo:
                path = f"/v1/services/{service}/instances/i-{i}"
                status, body = await conn.request("PUT", path, registration(service, i))
                if status == 200:
                    leases.append(decoder.decode(body).lease)
                else:
                    errors += 1
                if time.perf_counter() > deadline:
                    return
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(REGISTER_CONNECTIONS)))
    return len(leases), errors


def batches(leases: list[str]) -> Iterator[bytes]:
    for start in range(0, len(leases), BATCH):
        yield msgspec.json.encode({"leases": leases[start : start + BATCH]})


async def renew_forever(port: int, leases: list[str], missing: list[int]) -> None:
    """Every lease once per RENEW_EVERY seconds, in batches, on a fresh connection
    each time (the server closes idle keep-alive connections); cancelled at the end."""
    while True:
        started = time.perf_counter()
        conn = await Conn.open(port)
        try:
            for body in batches(list(leases)):
                status, answer = await conn.request("POST", "/v1/leases/keepalive", body)
                if status != 200 or b'"missing":[]' not in answer:
                    missing.append(status)
        finally:
            conn.close()
        await asyncio.sleep(max(0.0, RENEW_EVERY - (time.perf_counter() - started)))


# 2, 3 and 6. Load from wrk

LUA_DONE = """local n = 0
function request() n = n % #reqs + 1; return reqs[n] end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d\\n", summary.requests,
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""
LUA_KEEPALIVE = """reqs = {}
function init(args)
  for l in io.lines(args[1]) do
    reqs[#reqs + 1] = wrk.format("PUT", "/v1/leases/" .. l .. "/keepalive") end
end
"""
LUA_BATCH = """reqs = {}
function init(args)
  local size, batch = tonumber(args[2]), {}
  local function flush()
    local body = '{"leases":[' .. table.concat(batch, ",") .. ']}'
    reqs[#reqs + 1] = wrk.format("POST", "/v1/leases/keepalive",
      {["Content-Type"] = "application/json"}, body)
    batch = {}
  end
  for line in io.lines(args[1]) do
    batch[#batch + 1] = '"' .. line .. '"'
    if #batch == size then flush() end
  end
end
"""
LUA_GET = """reqs = {}
function init(args)
  for i = 0, tonumber(args[2]) - 1 do reqs[#reqs + 1] = wrk.format("GET", args[1] .. i) end
end
"""


async def wrk(pid: int, url: str, lua: str, args: list[str], per: int = 1) -> Rate:
    """wrk against `url`, WRK_RUNS runs of WRK_SECONDS; `per` units of work in
    each request. The run with the least server CPU per unit is kept (a busy
    neighbour only ever makes a run look worse); errors are summed."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua + LUA_DONE)
    argv = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{WRK_SECONDS}s", "-s", script.name, url]

    async def work() -> tuple[int, int]:
        done = await asyncio.to_thread(
            subprocess.run, [*argv, "--", *args], capture_output=True, text=True, timeout=60
        )
        result = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
        requests, errors = (int(x) for x in result.split()[1:])
        return requests * per, errors

    try:
        runs = [await measured(pid, work) for _ in range(WRK_RUNS)]
    finally:
        os.unlink(script.name)
    best = min(runs, key=lambda rate: rate.cpu_us)
    best.errors = sum(rate.errors for rate in runs)
    return best


FLOOR_APP = """
import sys, uvicorn
body = b"x" * int(sys.argv[2])
headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="uvloop",
            lifespan="off", log_config=None, access_log=False, server_header=False)
"""


async def floor(size: int) -> Rate:
    """A minimal ASGI app on uvicorn answering `size` bytes: HTTP's own cost."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(port), str(size)])
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                (await Conn.open(port)).close()
                break
            await asyncio.sleep(0.05)
        return await wrk(process.pid, f"http://127.0.0.1:{port}/", LUA_GET, ["/", "1"])
    finally:
        process.terminate()
        process.wait()


# Keepalive streams: `POST /v1/leases/keepalive/stream`, a chunked body of lease ids
# and a chunked response of one line per id. Hand-framed on a bare asyncio protocol,
# as the wrk scripts are hand-written: the client must cost as little as possible.

STREAM_HEAD = (
    b"POST /v1/leases/keepalive/stream HTTP/1.1\r\nHost: bench\r\n"
    b"Transfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
)
RENEWED = f" {TTL.removesuffix('s')}\n".encode()  # "<lease> 30\n"
MISSING = b" missing\n"


class KeepaliveStream(asyncio.Protocol):
    """One keepalive stream; counts the answers (renewed or not) as they arrive.
    With `window`, keeps that many lines in flight, sending `chunk` at a time
    from its leases in turn (flat out)."""

    def __init__(self, leases: list[str], *, window: int = 0, chunk: int = STREAM_CHUNK) -> None:
        self.leases, self.window, self.chunk = leases, window, chunk
        self.next = self.sent = self.renewed = self.missing = 0
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(STREAM_HEAD)
        self.top_up()

    def data_received(self, data: bytes) -> None:
        # Every answer ends with a newline: count up to the last one, keep the rest.
        seen = self.tail + data
        cut = seen.rfind(b"\n") + 1
        self.renewed += seen.count(RENEWED, 0, cut)
        self.missing += seen.count(MISSING, 0, cut)
        self.tail = seen[cut:]
        self.top_up()

    @property
    def answered(self) -> int:
        return self.renewed + self.missing

    def send(self, count: int) -> None:
        """The next `count` leases as one chunk."""
        assert self.transport is not None
        start = self.next
        picked = [self.leases[(start + i) % len(self.leases)] for i in range(count)]
        self.next = (start + count) % len(self.leases)
        body = ("\n".join(picked) + "\n").encode()
        self.transport.write(b"%x\r\n%s\r\n" % (len(body), body))
        self.sent += count

    def top_up(self) -> None:
        while self.window and self.sent - self.answered + self.chunk <= self.window:
            self.send(self.chunk)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_streams(port: int, leases: list[str], **kwargs: int) -> list[KeepaliveStream]:
    loop = asyncio.get_running_loop()
    streams = [KeepaliveStream(leases[s::STREAMS], **kwargs) for s in range(STREAMS)]
    for stream in streams:
        await loop.create_connection(lambda s=stream: s, "127.0.0.1", port)  # type: ignore[misc]
    return streams


async def stream_flat_out(port: int, leases: list[str]) -> tuple[int, int]:
    """STREAMS streams, each keeping STREAM_WINDOW leases in flight, for WRK_SECONDS."""
    streams = await open_streams(port, leases, window=STREAM_WINDOW)
    try:
        await asyncio.sleep(WRK_SECONDS)
        return sum(s.renewed for s in streams), sum(s.missing for s in streams)
    finally:
        for stream in streams:
            stream.close()


async def stream_fleet(port: int, leases: list[str]) -> tuple[int, int]:
    """Every lease renewed once per RENEW_EVERY seconds over STREAMS streams, as a
    fleet's timers would: every FLEET_TICK each stream sends its share of the leases
    due. One full round; answers still in flight at the end wait up to a second."""
    streams = await open_streams(port, leases)
    try:
        ticks = round(RENEW_EVERY / FLEET_TICK)
        start = time.perf_counter()
        for tick in range(ticks):
            for stream in streams:
                due = len(stream.leases) * (tick + 1) // ticks - len(stream.leases) * tick // ticks
                if due:
                    stream.send(due)
            await asyncio.sleep(max(0.0, start + (tick + 1) * FLEET_TICK - time.perf_counter()))
        for _ in range(100):
            if all(s.answered >= s.sent for s in streams):
                break
            await asyncio.sleep(0.01)
        return sum(s.renewed for s in streams), sum(s.missing for s in streams)
    finally:
        for stream in streams:
            stream.close()


async def stream_phases(pid: int, port: int, leases: list[str]) -> tuple[Rate, Rate]:
    """The fleet round (one run), then flat out (best of WRK_RUNS, as wrk's rows)."""
    fleet = await measured(pid, lambda: stream_fleet(port, leases))
    runs = [await measured(pid, lambda: stream_flat_out(port, leases)) for _ in range(WRK_RUNS)]
    best = min(runs, key=lambda rate: rate.cpu_us)
    best.errors = sum(rate.errors for rate in runs)
    return fleet, best
