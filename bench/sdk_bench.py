"""Per-call overhead of the Crossway HTTP client over plain httpx2 (and httpx).

One HTTP/1.1 keep-alive server (raw asyncio, fixed 11-byte JSON answer) runs
on loopback in a subprocess. In this process, each pair of rows sends
sequential GETs to it: the plain client to `http://127.0.0.1:<port>/items/1`,
the Crossway client to `http://bench/items/1`, which resolves through
discovery (a static in-memory cache holding that one instance) and runs the
full stack: balancer, retries with a budget, circuit breaker, outlier
detection, a traceparent header and, as a `Client` with a service name has
by default, telemetry: a client-side golden-signal count and a sampled
CLIENT span per call, pushed and sent to the same server in the background
(their CPU counts too). One more pair runs with telemetry off. The two rows take turns in blocks of
BLOCK calls, ROUNDS times, so drift on the shared machine hits them alike.

Latency: p50/p99 over every call of a row (perf_counter_ns around the
request, body read). CPU: process time per call (the server is another
process), taken from each row's best block, as the other benches here take
the best of several rounds: on a shared machine, load from elsewhere only
ever adds time. The median over rounds of the difference between the two
blocks of a round is shown beside it (which row goes first alternates). A last pair
swaps the network for `httpx2.MockTransport` on both sides: the transport's
own CPU cost without the noise of sockets. Targets: <= 15% extra latency at
p50 and <= 25 µs of extra CPU per call.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2

from crossway.registry.model import Instance
from crossway.sdk.policies import BreakerSpec, CallPolicy, OutlierSpec, RetrySpec, encode_policy
from crossway.sdk.settings import ClientSettings
from crossway.sdk.telemetry import ServiceTelemetry
from crossway.sdk.transport import CrosswaySyncTransport, CrosswayTransport

ROUNDS = 40
BLOCK = 120
WARMUP = 200
MOCK_BLOCK = 400
P50_TARGET = 0.15
CPU_TARGET_US = 25.0
SERVICE = "bench"
POLICY = CallPolicy(retries=RetrySpec(), breaker=BreakerSpec(), outlier=OutlierSpec())

SERVER = r"""
import asyncio, sys
ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
          b"content-length: 11\r\n\r\n{\"ok\":true}")

class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer, self.body_left = transport, b"", 0
    def data_received(self, data):
        if self.body_left:  # a body (spans, signals) is coming: skip it unscanned
            taken = min(self.body_left, len(data))
            self.body_left -= taken
            data = data[taken:]
            if self.body_left:
                return
            self.transport.write(ANSWER)
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            at = head.find(b"content-length:")
            size = int(head[at + 15:].split(b"\r\n", 1)[0]) if at >= 0 else 0
            rest = self.buffer[end + 4:]
            if len(rest) < size:
                self.body_left, self.buffer = size - len(rest), b""
                return
            self.buffer = rest[size:]
            self.transport.write(ANSWER)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the bench goes away

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


class StaticDiscovery:
    """A discovery cache that always knows one instance."""

    def __init__(self, port: int) -> None:
        self._instances = [Instance(SERVICE, "bench-1", "127.0.0.1", port)]

    async def instances(self, service: str) -> list[Instance]:
        return list(self._instances)

    def peek(self, service: str) -> list[Instance] | None:
        return list(self._instances)

    def subscribe(self, service: str, callback: Callable[[str, list[Instance]], None]) -> Any:
        return lambda: None


@dataclass
class Row:
    name: str
    latencies: list[int] = field(default_factory=list)
    cpu_per_call: list[float] = field(default_factory=list)  # seconds, one per block

    def record(self, latencies: list[int], cpu: float) -> None:
        self.latencies.extend(latencies)
        self.cpu_per_call.append(cpu / len(latencies))

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0

    @property
    def cpu_us(self) -> float:
        """CPU per call in the row's best block, in µs."""
        return min(self.cpu_per_call) * 1e6

    @property
    def cpu_median_us(self) -> float:
        return statistics.median(self.cpu_per_call) * 1e6


async def _block_async(get: Callable[[], Awaitable[Any]], n: int) -> tuple[list[int], float]:
    latencies = []
    cpu = time.process_time()
    for _ in range(n):
        began = time.perf_counter_ns()
        await get()
        latencies.append(time.perf_counter_ns() - began)
    return latencies, time.process_time() - cpu


def _block_sync(get: Callable[[], Any], n: int) -> tuple[list[int], float]:
    latencies = []
    cpu = time.process_time()
    for _ in range(n):
        began = time.perf_counter_ns()
        get()
        latencies.append(time.perf_counter_ns() - began)
    return latencies, time.process_time() - cpu


Gets = tuple[Callable[[], Any], Callable[[], Any]]


def _order(rounds: int) -> list[tuple[int, int]]:
    """Which row goes first in each round: plain first, then Crossway first,
    and so on (ABBA), so neither row always follows the other."""
    return [(0, 1) if i % 2 == 0 else (1, 0) for i in range(rounds)]


async def run_async_pair(gets: Gets, block: int = BLOCK) -> list[Row]:
    """Plain and Crossway blocks in turns; see the module header."""
    rows = [Row("plain"), Row("crossway")]
    for get in gets:
        await _block_async(get, WARMUP)
    for order in _order(ROUNDS):
        for i in order:
            rows[i].record(*await _block_async(gets[i], block))
    return rows


def run_sync_pair(gets: Gets) -> list[Row]:
    rows = [Row("plain"), Row("crossway")]
    for get in gets:
        _block_sync(get, WARMUP)
    for order in _order(ROUNDS):
        for i in order:
            rows[i].record(*_block_sync(gets[i], BLOCK))
    return rows


def _urls(port: int) -> tuple[str, str]:
    return f"http://127.0.0.1:{port}/items/1", f"http://{SERVICE}/items/1"


@asynccontextmanager
async def telemetry(port: int) -> AsyncIterator[ServiceTelemetry]:
    """A calling service's telemetry, as a `Client` makes it (every trace
    sampled), reporting to the bench server."""
    settings = ClientSettings(url=f"http://127.0.0.1:{port}", service="caller")
    async with httpx2.AsyncClient(base_url=settings.url) as http:
        signals = ServiceTelemetry(settings, http=http)
        await signals.start("caller-1")
        try:
            yield signals
        finally:
            await signals.stop()


async def httpx2_pair(port: int, signals: ServiceTelemetry | None) -> list[Row]:
    direct, named = _urls(port)
    transport = CrosswayTransport(
        StaticDiscovery(port), policies={SERVICE: POLICY}, telemetry=signals
    )
    async with httpx2.AsyncClient() as plain, httpx2.AsyncClient(transport=transport) as ours:
        return await run_async_pair((lambda: plain.get(direct), lambda: ours.get(named)))


async def httpx_pair(port: int, signals: ServiceTelemetry) -> list[Row]:
    import httpx

    from crossway.sdk.transport_httpx import CrosswayHttpxTransport

    direct, named = _urls(port)
    transport = CrosswayHttpxTransport(
        StaticDiscovery(port), policies={SERVICE: POLICY}, telemetry=signals
    )
    async with httpx.AsyncClient() as plain, httpx.AsyncClient(transport=transport) as ours:
        return await run_async_pair((lambda: plain.get(direct), lambda: ours.get(named)))


async def mock_pair(signals: ServiceTelemetry) -> list[Row]:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=b'{"ok":true}')

    direct, named = _urls(1)
    transport = CrosswayTransport(
        StaticDiscovery(1),
        inner=httpx2.MockTransport(answer),
        policies={SERVICE: POLICY},
        telemetry=signals,
    )
    async with (
        httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as plain,
        httpx2.AsyncClient(transport=transport) as ours,
    ):
        gets = (lambda: plain.get(direct), lambda: ours.get(named))
        return await run_async_pair(gets, MOCK_BLOCK)


def sync_pair(port: int, signals: ServiceTelemetry) -> list[Row]:
    direct, named = _urls(port)
    transport = CrosswaySyncTransport(
        StaticDiscovery(port), policies={SERVICE: POLICY}, telemetry=signals
    )
    with httpx2.Client() as plain, httpx2.Client(transport=transport) as ours:
        return run_sync_pair((lambda: plain.get(direct), lambda: ours.get(named)))


def report(title: str, rows: list[Row], *, latency_target: bool = True) -> None:
    plain, ours = rows
    print(f"\n{title}: {len(plain.latencies)} calls per row")
    header = f"  {'row':<10} {'p50 µs':>9} {'p99 µs':>9} {'CPU µs/call':>12} {'(median)':>9}"
    print(header)
    for row in rows:
        p50, p99 = row.quantile(0.50), row.quantile(0.99)
        cpu = f"{row.cpu_us:>12.1f} {row.cpu_median_us:>9.1f}"
        print(f"  {row.name:<10} {p50:>9.1f} {p99:>9.1f} {cpu}")
    extra_p50 = ours.quantile(0.50) / plain.quantile(0.50) - 1.0
    extra_p99 = ours.quantile(0.99) / plain.quantile(0.99) - 1.0
    paired = [o - p for o, p in zip(ours.cpu_per_call, plain.cpu_per_call, strict=True)]
    extra_cpu = ours.cpu_us - plain.cpu_us
    cpu_ok = "meets" if extra_cpu <= CPU_TARGET_US else "OVER"
    if latency_target:
        p50_ok = "meets" if extra_p50 <= P50_TARGET else "OVER"
        print(f"  latency p50 {extra_p50:+.1%} ({p50_ok} target +{P50_TARGET:.0%}),", end="")
    else:
        print(f"  latency p50 {extra_p50:+.1%},", end="")
    print(f" p99 {extra_p99:+.1%}; ratio p50 {1 + extra_p50:.2f}x")
    print(
        f"  extra CPU {extra_cpu:+.1f} µs/call, best blocks ({cpu_ok} target"
        f" {CPU_TARGET_US:g} µs); paired median {statistics.median(paired) * 1e6:+.1f}"
    )


def start_server() -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    return process, int(process.stdout.readline())


async def run(port: int) -> None:
    async with telemetry(port) as signals:
        report("httpx2.AsyncClient over loopback", await httpx2_pair(port, signals))
        report("the same, telemetry off", await httpx2_pair(port, None))
        if importlib.util.find_spec("httpx") is not None:
            report("httpx.AsyncClient over loopback", await httpx_pair(port, signals))
        rows = await mock_pair(signals)
        report("httpx2.AsyncClient, MockTransport (no network)", rows, latency_target=False)
        # Blocking code runs in worker threads while the loop keeps the
        # client's background work (telemetry) going, as in an application.
        rows = await asyncio.to_thread(sync_pair, port, signals)
        report("httpx2.Client (blocking, in a thread) over loopback", rows)


def main() -> None:
    print(__doc__.split("\n\n")[0])
    print(f"policy: {encode_policy(POLICY).decode()} (the rest at its defaults)")
    process, port = start_server()
    try:
        try:
            import uvloop

            uvloop.run(run(port))
        except ImportError:
            asyncio.run(run(port))
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)


if __name__ == "__main__":
    main()
