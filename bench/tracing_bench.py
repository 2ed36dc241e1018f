"""Control-plane CPU per 1,000 spans/s ingested, for each ingest format.

A real control plane (`crossway.server.run.serve` with the trace routes, memory
store, uvloop, access log at warning) runs as a child process. This process
sends it a fixed number of spans in batches, as exporters do (Zipkin v2 JSON,
OTLP/HTTP JSON, OTLP/HTTP protobuf; gzip off), from prebuilt bodies so that
building requests costs the server nothing. The server's CPU time (user +
system, from /proc/PID/stat) is read before and after each run once the
server is idle again, and reported as

    CPU-seconds per second at 1,000 spans/s  =  CPU seconds used / spans * 1000

i.e. the share of one core the control plane needs per 1,000 spans/s (0.05 =
5 % of a core). Each span looks like an instrumented HTTP call: 8 tags, a
parent, endpoints; traces of 5 spans. The store keeps everything
(the default budget of 200,000 spans is never reached in one run).

In-process lines break the cost down: decoding alone, and `TraceStore.add`
alone, per span, with the same bodies. No peer runs here (Zipkin's server and
the OpenTelemetry Collector are not packaged for this machine), so the
numbers stand alone. Numbers, not a test: nothing fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx2

from crossway.core.clock import SystemClock
from crossway.telemetry.traces import _otlp_proto, otlp, zipkin
from crossway.telemetry.traces.store import TraceStore
from crossway.testing.services import free_port

SPANS_PER_RUN = 20_000
BATCH = 200
SPANS_PER_TRACE = 5
TIME_CAP = 60.0

SERVER = """
import asyncio, sys, uvloop
from crossway.server import ServerSettings, serve
from crossway.server.api import traces
from crossway.server.logs import configure_logging
settings = ServerSettings(port=int(sys.argv[1]), store="memory", log_level="warning")
configure_logging("warning", "json")
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
    runner.run(serve(settings, extra=[traces.routes]))
"""


def zipkin_span(n: int, now_us: int) -> dict[str, Any]:
    trace, index = divmod(n, SPANS_PER_TRACE)
    span: dict[str, Any] = {
        "traceId": f"{trace + 1:032x}",
        "id": f"{n + 1:016x}",
        "name": "get /api/orders/{id}",
        "kind": "SERVER" if index == 0 else "CLIENT",
        "timestamp": now_us + index * 100,
        "duration": 1500 - index * 100,
        "localEndpoint": {"serviceName": "orders", "ipv4": "10.0.0.7", "port": 8080},
        "tags": {
            "http.method": "GET",
            "http.route": "/api/orders/{id}",
            "http.status_code": "200",
            "http.url": f"http://orders:8080/api/orders/{n}",
            "net.peer.name": "gateway",
            "user_agent.original": "python-httpx2/2",
            "server.address": "orders",
            "otel.scope.name": "crossway.sdk",
        },
    }
    if index:
        span["parentId"] = f"{n - index + 1:016x}"
        span["remoteEndpoint"] = {"serviceName": "billing"}
    return span


def zipkin_bodies(now_us: int) -> list[bytes]:
    spans = [zipkin_span(n, now_us) for n in range(SPANS_PER_RUN)]
    return [json.dumps(spans[i : i + BATCH]).encode() for i in range(0, len(spans), BATCH)]


def otlp_json_bodies(now_us: int) -> list[bytes]:
    bodies = []
    for body in zipkin_bodies(now_us):
        bodies.append(otlp.encode_json(zipkin.decode_spans(body)))
    return bodies


def otlp_proto_bodies(now_us: int) -> list[bytes]:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    bodies = []
    for body in otlp_json_bodies(now_us):
        parsed = json.loads(body)
        for resource in parsed["resourceSpans"]:
            for span in resource["scopeSpans"][0]["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = _b64(span[key])
        message = json_format.ParseDict(parsed, trace_service_pb2.ExportTraceServiceRequest())
        bodies.append(message.SerializeToString())
    return bodies


def _b64(hex_id: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hex_id)).decode()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int) -> float:
    """The server's CPU time once it has stopped moving (idle)."""
    last = cpu_seconds(pid)
    for _ in range(50):
        time.sleep(0.2)
        now = cpu_seconds(pid)
        if now - last < 0.005:
            return now
        last = now
    return last


def send_all(url: str, path: str, bodies: list[bytes], content_type: str) -> tuple[int, float]:
    headers = {"Content-Type": content_type}
    started = time.perf_counter()
    sent = 0
    with httpx2.Client(base_url=url, timeout=30) as client:
        for body in bodies:
            response = client.post(path, content=body, headers=headers)
            if response.status_code >= 300:
                raise RuntimeError(f"{path} answered {response.status_code}: {response.text}")
            sent += BATCH
            if time.perf_counter() - started > TIME_CAP:
                break
    return sent, time.perf_counter() - started


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx2.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the control plane did not start")


def in_process(name: str, bodies: list[bytes], decode: Callable[[bytes], list[Any]]) -> None:
    started = time.process_time()
    decoded = [decode(body) for body in bodies]
    decode_s = time.process_time() - started
    store = TraceStore(clock=SystemClock())
    started = time.process_time()
    for spans in decoded:
        store.add(spans)
    store_s = time.process_time() - started
    count = sum(len(spans) for spans in decoded)
    print(
        f"  {name:<16} decode {decode_s / count * 1e6:6.1f} µs/span   "
        f"store {store_s / count * 1e6:6.1f} µs/span"
    )


def main() -> None:
    now_us = int(time.time() * 1_000_000)
    formats: list[tuple[str, str, str, list[bytes], Callable[[bytes], list[Any]]]] = [
        ("zipkin v2 json", "/api/v2/spans", "application/json", zipkin_bodies(now_us),
         zipkin.decode_spans),
        ("otlp json", "/v1/traces", "application/json", otlp_json_bodies(now_us),
         otlp.decode_json),
    ]  # fmt: skip
    if _otlp_proto.available():
        formats.append(
            ("otlp protobuf", "/v1/traces", "application/x-protobuf", otlp_proto_bodies(now_us),
             _otlp_proto.decode)
        )  # fmt: skip
    else:
        print("(opentelemetry-proto is not installed: no protobuf run)")
    print(f"{SPANS_PER_RUN} spans per format, batches of {BATCH}, traces of {SPANS_PER_TRACE}")
    print("in-process cost per span:")
    for name, _, _, bodies, decode in formats:
        in_process(name, bodies, decode)
    print("control plane process (HTTP, uvloop):")
    print(f"  {'format':<16} {'spans/s sent':>12} {'CPU s/span':>12} {'cores per 1k spans/s':>22}")
    for name, path, content_type, bodies, _ in formats:
        process, url = start_server()
        try:
            before = settle(process.pid)
            sent, elapsed = send_all(url, path, bodies, content_type)
            used = settle(process.pid) - before
        finally:
            process.terminate()
            process.wait(15)
        per_span = used / sent
        print(
            f"  {name:<16} {sent / elapsed:>12,.0f} {per_span * 1e6:>10.1f}µs "
            f"{per_span * 1000:>22.3f}"
        )


if __name__ == "__main__":
    main()
