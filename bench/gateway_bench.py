"""The gateway beside nginx, HAProxy and Caddy as reverse proxies, under wrk.

    .venv/bin/python -m bench gateway_bench
    .venv/bin/python -m bench.gateway_bench [--duration 10] [--only crossway,nginx]

Setup, the same for every proxy, in one run: an upstream nginx (one worker)
serves a small body on two loopback ports; each proxy forwards a prefix
route to those two servers with keep-alive on both sides. The proxy under
test runs alone on CPU 0 (taskset); wrk and the upstream share CPU 1. Each
peer runs from a generated config in a temp dir, on free loopback ports, as
a child process stopped afterwards.

- Crossway: `path_prefix: /bench`, `peak_ewma` (P2C over peak EWMA latency)
  over the two upstreams, statistics on (bench/gateway_server.py);
- nginx: 1 worker, `upstream` block with `keepalive`;
- HAProxy: `nbthread 1`, `http-reuse always`;
- Caddy: `GOMAXPROCS=1`, `reverse_proxy` to both upstreams.

Then Crossway with `--workers 2`, which uses both cores (shared with wrk and
the upstream), against Crossway with one worker.

Each measurement is wrk `-t1 -c64 -d10s --latency` after a 2 s warm-up. The
ratios within one run are what this prints against the targets. On a shared
machine rps and latency move with everyone else's load, so the CPU time the
proxy's processes spent per request (from /proc, workers included) is shown
too: it moves far less with other load and compares the proxies' own cost.
Tools are installed with scripts/ensure-*; a peer whose binary is missing is
skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATH = "/bench/hello"
BODY = "hello from upstream\n"
CONNECTIONS = 64
WARMUP = 2.0
PROXY_CPU = "0"
LOAD_CPU = "1"


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float  # CPU time of the proxy's processes per request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )


def ensure_tools() -> None:
    for tool in ("wrk", "nginx", "haproxy", "caddy"):
        subprocess.run([str(ROOT / "scripts" / f"ensure-{tool}")], check=False)


def wait_http(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    request = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(request)
            if s.recv(65536).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered 200 on port {port} within {timeout:g}s")


@contextlib.contextmanager
def child(argv: list[str], cpus: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run `argv` pinned to `cpus` until the block ends, then stop it."""
    process = subprocess.Popen(
        ["taskset", "-c", cpus, *argv],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=None if os.environ.get("GWBENCH_DEBUG") else subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- peer configs ---------------------------------------------------------


def nginx_conf(tmp: Path, body: str) -> str:
    return f"""
worker_processes 1;
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    {body}
}}
"""


def upstream_conf(tmp: Path, ports: list[int]) -> str:
    servers = "".join(
        f"""
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }}
    }}"""
        for port in ports
    )
    return nginx_conf(tmp, servers)


def nginx_proxy_conf(tmp: Path, port: int, upstreams: list[int]) -> str:
    servers = "".join(f"server 127.0.0.1:{p};\n" for p in upstreams)
    return nginx_conf(
        tmp,
        f"""
    upstream backends {{ {servers} keepalive 128; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /bench {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""",
    )


def haproxy_conf(tmp: Path, port: int, upstreams: list[int]) -> str:
    servers = "".join(f"    server u{i} 127.0.0.1:{p}\n" for i, p in enumerate(upstreams))
    return f"""global
    nbthread 1
    maxconn 4096
    pidfile {tmp}/haproxy.pid
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend bench
    bind 127.0.0.1:{port}
    use_backend upstreams if {{ path_beg /bench }}
backend upstreams
    balance roundrobin
{servers}"""


def caddy_conf(port: int, upstreams: list[int]) -> str:
    targets = " ".join(f"127.0.0.1:{p}" for p in upstreams)
    return f"""{{
    admin off
    auto_https off
}}
http://127.0.0.1:{port} {{
    reverse_proxy /bench* {targets} {{
        lb_policy round_robin
    }}
}}
"""


# -- measuring ------------------------------------------------------------

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and its children (forked workers)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(stat.parent.name) == pid or int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def wrk(name: str, port: int, duration: float, pid: int) -> Result:
    url = f"http://127.0.0.1:{port}{PATH}"
    base = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{CONNECTIONS}"]
    subprocess.run([*base, f"-d{WARMUP:g}s", url], capture_output=True, check=True)
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(
        [*base, f"-d{duration:g}s", "--latency", url], capture_output=True, text=True, check=True
    ).stdout
    cpu = cpu_seconds(pid) - cpu_before
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out)[1])  # type: ignore[index]
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|timeout) (\d+)", out))
    errors += (
        sum(
            int(n)
            for n in re.findall(r"(?:connect|read|write) (\d+)", out.split("Socket errors")[-1])
        )
        if "Socket errors" in out
        else 0
    )
    return Result(name, rps, p50, p99, errors, 1e6 * cpu / max(requests, 1))


def measure_crossway(
    name: str, tmp: Path, upstreams: list[int], duration: float, workers: int, cpus: str
) -> Result:
    port = free_port()
    argv = [sys.executable, "-m", "bench.gateway_server", "--port", str(port)]
    argv += ["--admin-port", str(free_port()), "--workers", str(workers)]
    for p in upstreams:
        argv += ["--upstream", f"127.0.0.1:{p}"]
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    with child(argv, cpus, env=env) as pid:
        wait_http(port)
        return wrk(name, port, duration, pid)


def measure_peer(name: str, tmp: Path, upstreams: list[int], duration: float) -> Result | None:
    port = free_port()
    work = tmp / name
    work.mkdir()
    env: dict[str, str] = {}
    if name == "nginx":
        exe = binary("nginx")
        conf = work / "nginx.conf"
        conf.write_text(nginx_proxy_conf(work, port, upstreams))
        argv = [exe or "", "-p", str(work), "-c", str(conf)]
    elif name == "haproxy":
        exe = binary("haproxy")
        conf = work / "haproxy.cfg"
        conf.write_text(haproxy_conf(work, port, upstreams))
        argv = [exe or "", "-db", "-f", str(conf)]
    else:
        exe = binary("caddy")
        conf = work / "Caddyfile"
        conf.write_text(caddy_conf(port, upstreams))
        argv = [exe or "", "run", "--config", str(conf), "--adapter", "caddyfile"]
        env = {"GOMAXPROCS": "1", "HOME": str(work), "XDG_DATA_HOME": str(work)}
        env["XDG_CONFIG_HOME"] = str(work)
    if exe is None:
        print(f"{name}: not installed, skipped", flush=True)
        return None
    with child(argv, PROXY_CPU, env=env) as pid:
        wait_http(port)
        return wrk(name, port, duration, pid)


# -- report ---------------------------------------------------------------


def report(results: dict[str, Result], workers2: Result | None) -> None:
    print(f"\n{'proxy':<22}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'CPU us/req':>12}")
    for r in (*results.values(), *([workers2] if workers2 else [])):
        print(
            f"{r.name:<22}{r.rps:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}"
            f"{r.cpu_us:>12.1f}"
        )
    ours = results.get("crossway")
    if ours is None:
        return
    print("\nCrossway / peer    rps    p50    p99  CPU/req")
    for name, peer in results.items():
        if name != "crossway":
            print(
                f"  {name:<14}{ours.rps / peer.rps:>6.2f}x"
                f"{ours.p50_ms / peer.p50_ms:>6.2f}x{ours.p99_ms / peer.p99_ms:>6.2f}x"
                f"{ours.cpu_us / peer.cpu_us:>8.2f}x"
            )
    print("\ntargets")
    checks: list[tuple[str, float, str, float]] = []
    if "haproxy" in results:
        checks.append(("rps vs HAProxy", ours.rps / results["haproxy"].rps, ">=", 1.0))
    if "nginx" in results:
        checks.append(("rps vs nginx", ours.rps / results["nginx"].rps, ">=", 0.7))
        checks.append(("p99 vs nginx", ours.p99_ms / results["nginx"].p99_ms, "<=", 1.5))
    if "caddy" in results:
        checks.append(("rps vs Caddy", ours.rps / results["caddy"].rps, ">", 2.0))
    for label, ratio, op, target in checks:
        met = {">=": ratio >= target, "<=": ratio <= target, ">": ratio > target}[op]
        print(
            f"  {label:<16}{ratio:>6.2f}x  target {op} {target:g}x  {'met' if met else 'NOT met'}"
        )
    if workers2 is not None:
        print(
            f"\n--workers 2 / 1 worker: {workers2.rps / ours.rps:.2f}x rps "
            "(2 workers on both cores, which wrk and the upstream share; 1 worker on CPU 0 alone)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument(
        "--only", default="crossway,nginx,haproxy,caddy,workers2", help="comma-separated subset"
    )
    args = parser.parse_args(argv if argv is not None else [])
    only = set(args.only.split(","))
    if (os.cpu_count() or 1) < 2:
        print("gateway_bench: needs 2 CPUs (proxy on CPU 0, load on CPU 1); skipped")
        return
    ensure_tools()
    if binary("wrk") is None or binary("nginx") is None:
        print("gateway_bench: wrk and nginx are required; skipped")
        return
    with tempfile.TemporaryDirectory(prefix="crossway-gwbench-") as name:
        tmp = Path(name)
        upstreams = [free_port(), free_port()]
        (tmp / "upstream").mkdir()
        conf = tmp / "upstream" / "nginx.conf"
        conf.write_text(upstream_conf(tmp / "upstream", upstreams))
        exe = binary("nginx") or "nginx"
        with child([exe, "-p", str(tmp / "upstream"), "-c", str(conf)], LOAD_CPU):
            for port in upstreams:
                wait_http(port)
            results: dict[str, Result] = {}
            if "crossway" in only:
                results["crossway"] = measure_crossway(
                    "crossway", tmp, upstreams, args.duration, 1, PROXY_CPU
                )
            for peer in ("nginx", "haproxy", "caddy"):
                if peer in only and (result := measure_peer(peer, tmp, upstreams, args.duration)):
                    results[peer] = result
            workers2 = None
            if "workers2" in only:
                workers2 = measure_crossway(
                    "crossway --workers 2", tmp, upstreams, args.duration, 2, "0,1"
                )
    report(results, workers2)


if __name__ == "__main__":
    main(sys.argv[1:])
