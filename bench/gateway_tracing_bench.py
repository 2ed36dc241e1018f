"""What tracing and golden signals cost: gateway rps with them on vs off, and
the control plane's CPU per 1,000 spans/s it ingests from a gateway.

    .venv/bin/python -m bench gateway_tracing_bench
    .venv/bin/python -m bench.gateway_tracing_bench [--duration 3] [--rounds 2]

Setup: an upstream nginx (one worker; bench/gateway_bench.py's config)
serves a small body on two loopback ports; a Crossway gateway process
(the collector tuned as `crossway gateway`'s workers tune it) forwards
`/bench` to them, pinned to CPU 0, in one of two modes:

- off: no telemetry (the gateway's own admin statistics only);
- on:  `build_telemetry` as `crossway gateway --control-plane URL` builds
  it: a SERVER span for every sampled request (`--trace-sample-rate`,
  default 1: every request traced, the gateway's default), trace context
  injected upstream, client-side golden signals pushed every second,
  spans sent in batches to a real control plane (`crossway server`,
  memory store) on CPU 1.

Load: wrk `-t1 -c64` on CPU 1 (beside the upstream), a 1 s warm-up
(neither its requests nor its CPU counted: lazy imports, first connections),
then `--duration` seconds; the two modes alternate for `--rounds` rounds and
each mode's mean is compared, which evens out a shared machine's drift.
Without wrk, an in-process httpx2 loop (64 concurrent requests) stands in
(slower, so the ratio is less sharp).

Control plane CPU: user + system time from /proc/PID/stat over the "on"
rounds (plus 2 s for the last batches to land) divided by the spans it
received (`crossway_trace_spans_total`), per 1,000 spans/s — the share of
one core the control plane needs for 1,000 traced requests a second.
Numbers, not a test: nothing fails; the target is < 10 % rps lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2

from bench.gateway_bench import (
    LOAD_CPU,
    PATH,
    PROXY_CPU,
    binary,
    child,
    free_port,
    upstream_conf,
)
from bench.gateway_bench import wait_http as wait_200
from crossway.testing.server import CrosswayServer, start_server

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 64
TARGET_LOSS = 0.10

GATEWAY = """
import asyncio, signal, sys, uvloop
from crossway.balance import Endpoint
from crossway.core.clock import SystemClock
from crossway.proxy.admin import GatewayStats
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import route_from_object
from crossway.proxy.run import tune_collector
from crossway.proxy.server import ProxyServer
from crossway.proxy.telemetry import TelemetrySettings, build_telemetry, instance_name
from crossway.proxy.upstream import UpstreamPool

port, control_plane, rate = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
upstreams = sys.argv[4:]
ROUTE = {"match": {"path_prefix": "/bench"}, "backends": [{"service": "bench-upstream"}],
         "balancer": "peak_ewma", "timeout": "5s"}

async def serve():
    clock = SystemClock()
    clusters = Clusters(clock=clock)
    clusters.update("bench-upstream", [Endpoint(f"u{i}", "127.0.0.1", int(u))
                                       for i, u in enumerate(upstreams)])
    settings = TelemetrySettings(control_plane=control_plane or None, stats_interval=1.0,
                                 trace_sample_rate=rate, instance=instance_name())
    telemetry = build_telemetry(settings, clock=clock)
    config = GatewayConfig({"bench": route_from_object(ROUTE)}, version="bench")
    gateway = Gateway(config, clusters=clusters, pool=UpstreamPool(clock=clock),
                      stats=GatewayStats(), telemetry=telemetry)
    if telemetry is not None:
        await telemetry.start()
    server = ProxyServer(gateway, clock=clock)
    await server.start("127.0.0.1", port)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
        if telemetry is not None:
            await telemetry.aclose()

async def main():
    task = asyncio.ensure_future(serve())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass

tune_collector()  # as crossway gateway's workers do
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
    runner.run(main())
"""


@dataclass(frozen=True, slots=True)
class Run:
    mode: str
    rps: float
    requests: int
    cpu_us: float
    """Gateway CPU time (user + system) per request."""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spans_received(cp: CrosswayServer) -> float:
    text = httpx2.get(cp.url + "/metrics", timeout=10).text
    found = re.findall(r"^crossway_trace_spans_total\{[^}]*\} ([\d.e+]+)$", text, re.M)
    return sum(float(n) for n in found)


@contextlib.contextmanager
def gateway(port: int, control_plane: str, upstreams: list[int], rate: float) -> Iterator[int]:
    """Run the gateway pinned to the proxy CPU; yields its pid."""
    argv = ["taskset", "-c", PROXY_CPU, sys.executable, "-c", GATEWAY, str(port), control_plane]
    argv.append(str(rate))
    argv += [str(p) for p in upstreams]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )  # taskset execs the gateway: same pid
    try:
        wait_200(port)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def warm_up(port: int) -> None:
    """One second of load, not measured: connections, caches, lazy imports."""
    load(port, 1.0)


def load(port: int, seconds: float) -> tuple[float, int]:
    """(requests per second, requests) against the gateway for `seconds`."""
    url = f"http://127.0.0.1:{port}{PATH}"
    if shutil.which("wrk") is None:
        return asyncio.run(_httpx_load(url, seconds))
    base = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{CONNECTIONS}"]
    out = subprocess.run(
        [*base, f"-d{seconds:g}s", url], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    total = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    return rps, total


async def _httpx_load(url: str, seconds: float) -> tuple[float, int]:
    # The stand-in for wrk: bounded in time, 64 requests in flight.
    done = 0
    limits = httpx2.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx2.AsyncClient(limits=limits, timeout=10) as http:
        await http.get(url)
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < end:
                await http.get(url)
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        return done / (time.monotonic() - started), done


def measure(duration: float, rounds: int, rate: float) -> None:
    with tempfile.TemporaryDirectory(prefix="crossway-tracing-bench-") as tmp_name:
        tmp = Path(tmp_name) / "upstream"
        tmp.mkdir()
        upstreams = [free_port(), free_port()]
        conf = tmp / "nginx.conf"
        conf.write_text(upstream_conf(tmp, upstreams))
        cp = start_server(store="memory", extra_args=["--log-level", "warning"])
        try:
            pin = ["taskset", "-cp", LOAD_CPU, str(cp.process.pid)]
            subprocess.run(pin, capture_output=True, check=False)
            with child([binary("nginx") or "nginx", "-p", str(tmp), "-c", str(conf)], LOAD_CPU):
                for port in upstreams:
                    wait_200(port)
                runs, cp_cpu, spans = _rounds(cp, upstreams, duration, rounds, rate)
        finally:
            cp.stop()
    report(runs, cp_cpu, spans, rate)


def _rounds(
    cp: CrosswayServer, upstreams: list[int], duration: float, rounds: int, rate: float
) -> tuple[list[Run], float, float]:
    runs: list[Run] = []
    cp_cpu = 0.0
    spans = 0.0
    for _ in range(rounds):
        for mode, control_plane in (("off", ""), ("on", cp.url)):
            port = free_port()
            before_cpu, before_spans = cpu_seconds(cp.process.pid), spans_received(cp)
            with gateway(port, control_plane, upstreams, rate) as pid:
                warm_up(port)
                cpu_before = cpu_seconds(pid)
                rps, total = load(port, duration)
                cpu = cpu_seconds(pid) - cpu_before
            time.sleep(2.0)  # the last batches land
            if mode == "on":
                cp_cpu += cpu_seconds(cp.process.pid) - before_cpu
                spans += spans_received(cp) - before_spans
            runs.append(Run(mode, rps, total, cpu / max(total, 1) * 1e6))
    return runs, cp_cpu, spans


def report(runs: list[Run], cp_cpu: float, spans: float, rate: float) -> None:
    def mean(mode: str, field: str) -> float:
        picked = [getattr(r, field) for r in runs if r.mode == mode]
        return float(sum(picked) / len(picked))

    off, on = mean("off", "rps"), mean("on", "rps")
    loss = 1.0 - on / off
    cpu_off, cpu_on = mean("off", "cpu_us"), mean("on", "cpu_us")
    tool = "wrk" if shutil.which("wrk") else "httpx2 loop"
    print(
        f"gateway rps, {tool}, {CONNECTIONS} connections, 1 worker on CPU {PROXY_CPU}, "
        f"trace sample rate {rate:g}"
    )
    for run in runs:
        print(
            f"  {run.mode:>3}: {run.rps:>9,.0f} rps  ({run.requests:,} requests, "
            f"{run.cpu_us:.1f} µs gateway CPU per request)"
        )
    verdict = "meets" if loss < TARGET_LOSS else "misses"
    print(f"  tracing+metrics on / off = {on / off:.3f}  ({loss:+.1%} rps lost; {verdict} < 10%)")
    # On a busy machine wall-clock rps moves with the neighbours; CPU per
    # request does not, and at saturation capacity is its inverse.
    capacity = cpu_off / cpu_on
    print(
        f"  CPU per request on / off = {cpu_on:.1f} / {cpu_off:.1f} µs -> capacity ratio "
        f"{capacity:.3f} ({1 - capacity:+.1%} at saturation)"
    )
    if spans > 0:
        per_1000 = cp_cpu / spans * 1000
        print(
            f"control plane: {spans:,.0f} spans ingested for {cp_cpu:.2f} CPU-s "
            f"-> {per_1000:.3f} cores per 1,000 spans/s ({cp_cpu / spans * 1e6:.1f} µs/span, "
            "golden-signal pushes included)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    parser.add_argument(
        "--trace-sample-rate", type=float, default=1.0, help="head sampling in the 'on' mode"
    )
    args = parser.parse_args(argv if argv is not None else [])
    if binary("nginx") is None:
        print("skipped: nginx (the upstream) is not installed (scripts/ensure-nginx)")
        return
    measure(args.duration, max(1, args.rounds), args.trace_sample_rate)


if __name__ == "__main__":
    main(sys.argv[1:])
