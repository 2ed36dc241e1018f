"""The demo, end to end, as a newcomer runs it: `crossway up --demo`.

One test walks the issue's "Must show" in order, against the real thing —
`crossway up` as a subprocess, its control plane, gateway and the shop's
services (examples/shop/) on loopback:

1. start it from an empty folder and time how long until the gateway serves
   the shop's home page (printed: the target is under 10 s);
2. drive 1,000 requests through the gateway (20 at a time): they succeed,
   and the stock widget's route shows the 90/10 canary split; an order form
   sent twice makes one order; the cleanup job runs on the elected orders
   replica only;
3. golden signals (`GET /v1/stats`) and traces (`GET /api/v2/services`)
   appear for web, orders, inventory and payments — pushed by the SDK inside
   the services (`CROSSWAY_STATS_INTERVAL=2s` so this takes seconds, not 10);
4. set the payments failure flag (`failing_instance: payments-2`): that
   replica refuses charges, yet >= 99% of the next 500 requests succeed at
   the gateway (orders retries the idempotent charge and ejects the replica);
5. `crossway restart orders` while requests flow: none fails;
6. SIGINT: `crossway up` exits 0, no process it started is alive, and nothing
   listens on any of its ports.

A missing piece (the SDK not pushing, a route not seeded, `crossway up`
leaving a process behind) fails the step with what was seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from crossway.testing.services import free_port, port_open

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SHOP_SERVICES = ("web", "orders", "inventory", "payments")
CONCURRENCY = 20
STARTUP_BOUND = 90.0  # seconds; the target (< 10 s) is printed, see the header
SIGNALS_BOUND = 60.0
RESTART_BOUND = 120.0
STOP_BOUND = 60.0
FAILING = "payments-2"


def crossway_command() -> list[str]:
    """The `crossway` script of this environment (what `make run` runs)."""
    script = Path(sys.executable).parent / "crossway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "crossway.cli.main"]


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    control: str
    gateway: str
    ports: tuple[int, int, int]
    log: Path

    def log_tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    control_port, gateway_port, admin_port = free_port(), free_port(), free_port()
    log = tmp_path / "up.log"
    env = {**os.environ, "CROSSWAY_STATS_INTERVAL": "2s"}
    env.pop("CROSSWAY_URL", None)
    command = [
        *crossway_command(),
        "up",
        "--demo",
        "--control-port",
        str(control_port),
        "--gateway-port",
        str(gateway_port),
        "--admin-port",
        str(admin_port),
        "--data-dir",
        str(tmp_path / "data"),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so a failed test can still end everything it started
        )
    demo = Demo(
        process=process,
        control=f"http://127.0.0.1:{control_port}",
        gateway=f"http://127.0.0.1:{gateway_port}",
        ports=(control_port, gateway_port, admin_port),
        log=log,
    )
    try:
        yield demo
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# -- traffic -------------------------------------------------------------------------------


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    inventory_versions: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failed(self) -> int:
        return sum(n for outcome, n in self.outcomes.items() if not outcome.startswith(("2", "3")))

    @property
    def success_rate(self) -> float:
        return 1.0 - self.failed / self.total if self.total else 0.0

    def summary(self) -> str:
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(self.outcomes.items()))
        return f"{self.total} requests, {self.success_rate:.2%} ok ({shown})"


def shopping(rng: random.Random, order_share: float) -> tuple[str, str, dict[str, str] | None]:
    """One request of a browsing session, as the shop's pages make them."""
    item = rng.randint(1, 6)
    if rng.random() < order_share:
        form = {"item_id": str(item), "quantity": "1", "key": str(uuid.uuid4())}
        return "POST", "/order", form
    path = rng.choice(["/", f"/products/{item}", f"/api/inventory/items/{item}", "/orders"])
    return "GET", path, None


async def one_request(
    http: httpx2.AsyncClient, tally: Tally, rng: random.Random, order_share: float
) -> None:
    method, path, form = shopping(rng, order_share)
    try:
        response = await http.request(method, path, data=form)
    except httpx2.HTTPError as exc:
        outcome, detail = type(exc).__name__, str(exc)
    else:
        outcome, detail = str(response.status_code), response.text[:200]
        if path.startswith("/api/inventory") and response.status_code == 200:
            tally.inventory_versions[response.json().get("version", "?")] += 1
    tally.outcomes[outcome] += 1
    if not outcome.startswith(("2", "3")) and len(tally.failures) < 10:
        tally.failures.append(f"{method} {path} -> {outcome}: {detail}")


async def drive(http: httpx2.AsyncClient, count: int, *, order_share: float) -> Tally:
    """`count` requests through the gateway, CONCURRENCY at a time."""
    tally, rng, slots = Tally(), random.Random(count), asyncio.Semaphore(CONCURRENCY)

    async def bounded() -> None:
        async with slots:
            await one_request(http, tally, rng, order_share)

    await asyncio.gather(*(bounded() for _ in range(count)))
    return tally


@contextlib.asynccontextmanager
async def steady_traffic(http: httpx2.AsyncClient, tally: Tally) -> AsyncIterator[None]:
    """Requests from 5 concurrent shoppers until the block ends (at most 5,000)."""
    stop, rng = asyncio.Event(), random.Random(7)

    async def shopper() -> None:
        for _ in range(1_000):
            if stop.is_set():
                return
            await one_request(http, tally, rng, 0.3)

    shoppers = [asyncio.create_task(shopper()) for _ in range(5)]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*shoppers)


# -- the control plane -----------------------------------------------------------------------


async def processes(http: httpx2.AsyncClient, demo: Demo) -> list[dict[str, Any]]:
    response = await http.get(f"{demo.control}/v1/processes")
    response.raise_for_status()
    listed: list[dict[str, Any]] = response.json()["processes"]
    return listed


async def wait_for_shop(http: httpx2.AsyncClient, demo: Demo) -> float:
    """Seconds from the start until the gateway serves the home page."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < STARTUP_BOUND:
        assert demo.process.poll() is None, f"crossway up exited:\n{demo.log_tail()}"
        try:
            response = await http.get(f"{demo.gateway}/", timeout=5.0)
            if response.status_code == 200 and "Crossway Tea Shop" in response.text:
                return time.monotonic() - started
            last = f"{response.status_code}: {response.text[:200]}"
        except httpx2.HTTPError as exc:
            last = repr(exc)
        await asyncio.sleep(0.1)
    pytest.fail(f"the shop did not answer in {STARTUP_BOUND:g}s ({last}):\n{demo.log_tail()}")


async def wait_for_signals(http: httpx2.AsyncClient, demo: Demo) -> None:
    """Each shop service's own golden signals (server side) and spans arrive."""
    deadline = time.monotonic() + SIGNALS_BOUND
    missing_stats: set[str] = set(SHOP_SERVICES)
    missing_traces: set[str] = set(SHOP_SERVICES)
    while time.monotonic() < deadline and (missing_stats or missing_traces):
        rows = (await http.get(f"{demo.control}/v1/stats", params={"window": "5m"})).json()
        reported = {
            row["service"]
            for row in rows["rows"]
            if row.get("side") == "server" and row["requests"] > 0
        }
        missing_stats = set(SHOP_SERVICES) - reported
        traced = (await http.get(f"{demo.control}/api/v2/services")).json()
        missing_traces = set(SHOP_SERVICES) - set(traced)
        await asyncio.sleep(1.0)
    assert not missing_stats, (
        f"no golden signals (GET /v1/stats, server side) from {sorted(missing_stats)} "
        f"after {SIGNALS_BOUND:g}s: the SDK middleware does not push them"
    )
    assert not missing_traces, (
        f"no spans (GET /api/v2/services) from {sorted(missing_traces)} "
        f"after {SIGNALS_BOUND:g}s: the SDK does not report them"
    )
    for service in SHOP_SERVICES:  # and each has a trace to show
        found = await http.get(
            f"{demo.control}/api/v2/traces", params={"serviceName": service, "limit": 1}
        )
        assert found.status_code == 200, found.text
        assert found.json(), f"no trace through {service}"


async def payments_errors(http: httpx2.AsyncClient, demo: Demo) -> int:
    body = (
        await http.get(f"{demo.control}/v1/stats", params={"service": "payments", "window": "5m"})
    ).json()
    total = body.get("total") or {}
    return int(total.get("errors", 0))


async def set_failure_flag(http: httpx2.AsyncClient, demo: Demo, instance: str) -> None:
    """Publish shop/payments.yaml and wait until every payments replica follows it."""
    body = f'failing_instance: "{instance}"\nmode: error\nfailure_rate: 0.0\n'
    response = await http.put(
        f"{demo.control}/v1/config/default/shop/payments.yaml",
        content=body,
        headers={"Content-Type": "application/yaml"},
    )
    assert response.status_code in (200, 201), response.text
    replicas = [p for p in await processes(http, demo) if p["service"] == "payments"]
    assert len(replicas) >= 2, f"payments should run 2 replicas: {replicas}"
    for replica in replicas:
        seen = ""
        for _ in range(50):
            settings = (await http.get(f"http://127.0.0.1:{replica['port']}/settings")).json()
            seen = settings["failing_instance"]
            if seen == instance:
                break
            await asyncio.sleep(0.1)
        assert seen == instance, f"{replica['instance_id']} still has failing_instance={seen!r}"


async def roll_orders(http: httpx2.AsyncClient, demo: Demo) -> list[str]:
    """`crossway restart orders`, then wait until both replicas were replaced."""
    before = {p["instance_id"] for p in await processes(http, demo) if p["service"] == "orders"}
    restart = await asyncio.create_subprocess_exec(
        *crossway_command(),
        "restart",
        "orders",
        "--url",
        demo.control,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(restart.communicate(), timeout=30)
    assert restart.returncode == 0, output.decode(errors="replace")
    deadline = time.monotonic() + RESTART_BOUND
    current: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        current = [p for p in await processes(http, demo) if p["service"] == "orders"]
        ids = {p["instance_id"] for p in current}
        if len(current) == 2 and not ids & before and all(p["state"] == "healthy" for p in current):
            return sorted(ids)
        await asyncio.sleep(0.5)
    pytest.fail(f"orders was not rolled in {RESTART_BOUND:g}s: {current}\n{demo.log_tail()}")


async def check_leader_job(http: httpx2.AsyncClient, demo: Demo) -> str:
    """Exactly one orders replica — the elected leader — runs the cleanup job."""
    orders = {p["instance_id"] for p in await processes(http, demo) if p["service"] == "orders"}
    deadline = time.monotonic() + 30.0
    runners: set[str] = set()
    leader: str | None = None
    while time.monotonic() < deadline:
        elected = (await http.get(f"{demo.control}/v1/elections/job.orders-cleanup/leader")).json()
        leader = (elected.get("leader") or {}).get("value")
        logs = await http.get(f"{demo.control}/v1/processes/orders/logs", params={"tail": 500})
        runners = {
            line.split("leader ", 1)[1].split()[0]
            for line in logs.text.splitlines()
            if " ran cleanup" in line
        }
        if leader and runners:
            break
        await asyncio.sleep(1.0)
    assert leader is not None, "nobody leads the cleanup job (election job.orders-cleanup)"
    assert leader in orders, f"the cleanup job's leader {leader!r} is not an orders replica"
    assert runners == {leader}, f"cleanup ran on {sorted(runners)}, the leader is {leader}"
    return leader


async def check_idempotent_order(shop: httpx2.AsyncClient) -> None:
    """The same order form sent twice makes one order."""
    form = {"item_id": "2", "quantity": "1", "key": str(uuid.uuid4())}
    first = await shop.post("/order", data=form)
    again = await shop.post("/order", data=form)
    assert first.status_code == again.status_code == 303, (first.text[:300], again.text[:300])
    assert first.headers["location"] == again.headers["location"]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its exit status is left


# -- the test ----------------------------------------------------------------------------------


async def test_demo_shop_end_to_end(demo: Demo) -> None:
    async with (
        httpx2.AsyncClient(timeout=30.0) as control,
        httpx2.AsyncClient(
            base_url=demo.gateway,
            timeout=30.0,
            limits=httpx2.Limits(max_connections=CONCURRENCY),
        ) as shop,
    ):
        # 1. Up, and serving the shop.
        took = await wait_for_shop(control, demo)
        print(f"\ncrossway up --demo: the gateway served the shop after {took:.1f}s")

        # 2. 1,000 requests through the gateway.
        warm = await drive(shop, 1_000, order_share=0.2)
        versions = warm.inventory_versions
        print(f"1,000 requests: {warm.summary()}; inventory versions {dict(versions)}")
        assert warm.total == 1_000
        assert warm.success_rate >= 0.99, warm.failures
        assert versions["v1"] > versions["v2"] > 0, f"no 90/10 canary split: {dict(versions)}"

        await check_idempotent_order(shop)
        leader = await check_leader_job(control, demo)
        print(f"the cleanup job runs on the leader only: {leader}")

        # 3. Golden signals and traces of all four services.
        await wait_for_signals(control, demo)

        # 4. A failing payments replica, hidden by retries and ejection.
        errors_before = await payments_errors(control, demo)
        await set_failure_flag(control, demo, FAILING)
        flagged = await drive(shop, 500, order_share=0.5)
        print(f"500 requests with {FAILING} failing: {flagged.summary()}")
        assert flagged.success_rate >= 0.99, flagged.failures
        deadline = time.monotonic() + SIGNALS_BOUND
        while (refused := await payments_errors(control, demo) - errors_before) <= 0:
            assert time.monotonic() < deadline, f"{FAILING} never failed a charge: flag not live"
            await asyncio.sleep(1.0)
        print(f"payments answered {refused} error(s) that the callers never saw")
        await set_failure_flag(control, demo, "")

        # 5. A rolling restart of orders under traffic.
        rolling = Tally()
        async with steady_traffic(shop, rolling):
            new_ids = await roll_orders(control, demo)
            await asyncio.sleep(2.0)  # and a little traffic on the new replicas alone
        print(f"rolling restart of orders -> {new_ids}: {rolling.summary()}")
        assert rolling.total > 0
        assert rolling.failed == 0, rolling.failures

        # 6. Ctrl-C stops everything.
        listed = await processes(control, demo)
    pids = [p["pid"] for p in listed if p.get("pid")]
    ports = {*demo.ports, *(p["port"] for p in listed if p.get("port"))}
    assert {p["service"] for p in listed} >= {"gateway", *SHOP_SERVICES}
    demo.process.send_signal(signal.SIGINT)
    try:
        code = demo.process.wait(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"crossway up did not stop {STOP_BOUND:g}s after SIGINT:\n{demo.log_tail()}")
    assert code == 0, f"crossway up exited {code}:\n{demo.log_tail()}"
    deadline = time.monotonic() + 10.0
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not left, f"processes still alive after crossway up exited: {left}"
    listening = sorted(port for port in ports if port_open("127.0.0.1", port))
    assert not listening, f"ports still listening after crossway up exited: {listening}"
