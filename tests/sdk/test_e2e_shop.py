"""End to end with real processes on loopback: a control plane (`crossway
server`, SQLite), three `catalog` instances and one `orders` (FastAPI on
uvicorn, examples/sdk_shop), each registering through the SDK, driven by an
SDK client in the test process.

The tests share one shop and run in file order; each checks what it needs
first. The control-plane outage (30 s, the duration the issue names) is last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from pydantic import BaseModel, Field

from crossway.sdk import Client
from crossway.testing.server import CrosswayServer, start_server
from crossway.testing.services import free_port

pytestmark = pytest.mark.integration

SHOP = Path(__file__).resolve().parents[2] / "examples" / "sdk_shop"
NAMESPACE = "e2e"
ORDERS_CONFIG = f"/v1/config/{NAMESPACE}/shop/orders.yaml"
CATALOGS = ("catalog-1", "catalog-2", "catalog-3")


@dataclass
class Shop:
    plane: CrosswayServer
    root: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, service: str, instance: str) -> None:
        port = self.ports[instance] = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CROSSWAY_")}
        env.update(
            CROSSWAY_URL=self.plane.url,
            CROSSWAY_SERVICE=service,
            CROSSWAY_INSTANCE_ID=instance,
            CROSSWAY_PORT=str(port),
            CROSSWAY_ADDRESS="127.0.0.1",
            CROSSWAY_TTL="5s",
            CROSSWAY_NAMESPACE=NAMESPACE,
            CROSSWAY_CACHE_DIR=str(self.root / "cache" / instance),
        )
        argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(SHOP), f"{service}:app"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        with (self.root / f"{instance}.log").open("ab") as log:
            self.processes[instance] = subprocess.Popen(argv, env=env, stdout=log, stderr=log)

    def kill(self, instance: str) -> None:
        process = self.processes[instance]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def logs(self) -> str:
        parts = [
            f"--- {p.stem}\n{p.read_text(errors='replace')[-1500:]}"
            for p in self.root.glob("*.log")
        ]
        return "\n".join(parts) + f"\n--- control plane\n{self.plane.log()[-1500:]}"

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.plane.stop()


def publish(shop: Shop, content: str) -> int:
    response = httpx2.put(f"{shop.plane.url}{ORDERS_CONFIG}", content=content, timeout=5)
    response.raise_for_status()
    version: int = response.json()["version"]
    return version


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    root = tmp_path_factory.mktemp("shop")
    running = Shop(start_server(store="sqlite"), root)
    try:
        publish(running, "discount_percent: 0\nbanner: Welcome\n")
        for instance in CATALOGS:
            running.start("catalog", instance)
        running.start("orders", "orders-1")
        yield running
    finally:
        running.stop()


@pytest.fixture
async def client(shop: Shop, tmp_path: Path) -> AsyncIterator[Client]:
    made = Client(url=shop.plane.url, register=False, cache_dir=tmp_path, namespace=NAMESPACE)
    async with made:
        alive = [i for i in CATALOGS if shop.processes[i].poll() is None]
        await until_registered(made, shop, {"catalog": len(alive), "orders": 1})
        yield made


async def until_registered(client: Client, shop: Shop, wanted: dict[str, int]) -> None:
    deadline = time.monotonic() + 60
    for service in wanted:
        await client.discovery.instances(service)
    while any(len(client.discovery.peek(s) or []) < n for s, n in wanted.items()):
        assert time.monotonic() < deadline, f"services did not register:\n{shop.logs()}"
        await asyncio.sleep(0.1)


@dataclass
class Tally:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)


async def quote(http: httpx2.AsyncClient, tally: Tally, item: int = 1) -> None:
    try:
        response = await http.get(f"http://orders/quote/{item}", params={"quantity": 2})
    except Exception as exc:
        tally.failures.append(f"{type(exc).__name__}: {exc}")
        return
    if response.status_code != 200:
        tally.failures.append(f"{response.status_code}: {response.text[:200]}")
        return
    tally.ok += 1
    tally.served_by[response.json()["catalog_instance"]] += 1


# -- balancing ---------------------------------------------------------------------------------


async def test_calls_balance_across_three_instances_of_the_callee(
    shop: Shop, client: Client
) -> None:
    direct: Counter[str] = Counter()
    tally = Tally()
    async with client.http(timeout=10.0) as http:
        for _ in range(150):
            direct[(await http.get("http://catalog/items/2")).json()["served_by"]] += 1
        for _ in range(150):
            await quote(http, tally)
    assert set(direct) == set(CATALOGS)
    assert min(direct.values()) >= 40, direct
    assert tally.failures == []
    assert set(tally.served_by) == set(CATALOGS)
    assert min(tally.served_by.values()) >= 40, tally.served_by


# -- configuration ---------------------------------------------------------------------------


class OrderSettings(BaseModel):
    max_quantity: int = Field(10, ge=1)
    discount_percent: float = Field(0.0, ge=0, le=90)
    banner: str = "Thanks"


async def orders_settings(http: httpx2.AsyncClient) -> dict[str, Any]:
    found: dict[str, Any] = (await http.get("http://orders/settings")).json()
    return found


async def test_a_config_change_reaches_the_bound_settings_within_a_second(
    shop: Shop, client: Client
) -> None:
    changed = asyncio.Event()
    bound = await client.bind(
        OrderSettings, "orders.yaml", group="shop", on_change=lambda old, new: changed.set()
    )
    async with client.http(timeout=10.0) as http:
        before = await orders_settings(http)
        await asyncio.sleep(0.2)  # both followers are waiting in their long polls
        started = time.perf_counter()
        version = await asyncio.to_thread(publish, shop, "discount_percent: 15\nbanner: Sale\n")
        await asyncio.wait_for(changed.wait(), 1.0)
        in_process = time.perf_counter() - started
        while (await orders_settings(http))["version"] != version:
            assert time.perf_counter() - started < 1.0, "orders did not see the change in 1 s"
            await asyncio.sleep(0.01)
        in_orders = time.perf_counter() - started
        tally = Tally()
        await quote(http, tally)
    print(
        f"config change: bound object {in_process * 1000:.0f} ms, orders {in_orders * 1000:.0f} ms"
    )
    assert before["version"] < version
    assert bound.discount_percent == 15.0
    assert bound.version == version
    assert in_process < 1.0
    assert in_orders < 1.0
    assert tally.ok == 1
    await bound.stop()


async def test_a_bad_config_version_is_refused_and_the_old_value_kept(
    shop: Shop, client: Client
) -> None:
    bound = await client.bind(OrderSettings, "orders.yaml", group="shop")
    async with client.http(timeout=10.0) as http:
        good = await orders_settings(http)
        bad_version = publish(shop, "discount_percent: 500\nbanner: Oops\n")  # valid YAML
        deadline = time.monotonic() + 5
        while (now := await orders_settings(http))["rejected"] == good["rejected"]:
            assert time.monotonic() < deadline, "orders never looked at the bad version"
            await asyncio.sleep(0.02)
        metrics = (await http.get("http://orders/metrics")).text
        response = await http.get("http://orders/quote/1", params={"quantity": 2})
    assert now["version"] == good["version"] < bad_version
    assert now["discount_percent"] == good["discount_percent"]
    assert now["banner"] == good["banner"]
    assert 'crossway_sdk_config_rejected_total{group="shop",key="orders.yaml"' in metrics
    expected = round(30.0 * 2 * (1 - good["discount_percent"] / 100), 2)
    assert response.json()["total"] == expected
    while bound.rejected == 0:  # the bound object in this process refuses it too
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert bound.version == good["version"]
    assert bound.discount_percent == good["discount_percent"]
    publish(shop, "discount_percent: 5\nbanner: Fixed\n")  # the next good version applies
    await bound.stop()


# -- failures ----------------------------------------------------------------------------------


async def test_a_callee_killed_with_sigkill_fails_no_call(shop: Shop, client: Client) -> None:
    tally = Tally()
    victim = "catalog-2"

    async def worker(http: httpx2.AsyncClient, calls: int) -> None:
        for _ in range(calls):
            await quote(http, tally)

    async def killer() -> None:
        while tally.total < 200:  # mid-run, with calls in flight
            await asyncio.sleep(0.005)
        await asyncio.to_thread(shop.kill, victim)

    async with client.http(timeout=10.0) as http:
        await asyncio.gather(killer(), *(worker(http, 250) for _ in range(4)))
        served_before = dict(tally.served_by)
        late = Tally()
        for _ in range(60):
            await quote(http, late)
    print(
        f"SIGKILL of {victim}: {tally.total} calls, {len(tally.failures)} failed, {tally.served_by}"
    )
    assert tally.total == 1000
    assert tally.failures == [], tally.failures[:5]
    assert served_before[victim] > 0
    assert late.failures == []
    assert victim not in late.served_by  # retried away, then ejected or deregistered
    assert set(late.served_by) == {"catalog-1", "catalog-3"}


async def test_the_control_plane_killed_for_30s_fails_no_call(shop: Shop, client: Client) -> None:
    if shop.processes[CATALOGS[1]].poll() is not None:  # killed above: bring it back
        shop.start("catalog", CATALOGS[1])
        await until_registered(client, shop, {"catalog": 3})
    tally = Tally()
    async with client.http(timeout=10.0) as http:
        await quote(http, tally)
        old = shop.plane
        old.stop(signal.SIGKILL)
        stale_seen = False
        ends = time.monotonic() + 30.0
        while time.monotonic() < ends:
            await quote(http, tally)
            stale_seen = stale_seen or client.discovery.is_stale("orders")
            await asyncio.sleep(0.01)
        during = tally.total
        shop.plane = await asyncio.to_thread(
            start_server, store="sqlite", data_dir=old.data_dir, port=old.port
        )
        deadline = time.monotonic() + 30
        while not registered_again(shop):
            assert time.monotonic() < deadline, f"services did not register again:\n{shop.logs()}"
            await quote(http, tally)
            await asyncio.sleep(0.1)
        for _ in range(20):
            await quote(http, tally)
    print(f"control plane down 30 s: {during} calls, {len(tally.failures)} failed")
    assert tally.failures == [], tally.failures[:5]
    assert during > 500
    assert stale_seen


def registered_again(shop: Shop) -> bool:
    def ids(service: str) -> set[str]:
        found = httpx2.get(f"{shop.plane.url}/v1/services/{service}", timeout=5).json()
        return {i["id"] for i in found}

    return ids("catalog") == set(CATALOGS) and ids("orders") == {"orders-1"}
