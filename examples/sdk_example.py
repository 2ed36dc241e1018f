"""The SDK end to end: a control plane, two `catalog` instances and one `orders`
(FastAPI on uvicorn, from examples/sdk_shop), quotes through discovery, and a
live config change — one good, one refused.

    .venv/bin/python examples/sdk_example.py

Everything runs on loopback in throwaway processes and is stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2

import crossway
from crossway.testing.server import CrosswayServer, start_server
from crossway.testing.services import free_port

SHOP = Path(__file__).resolve().parent / "sdk_shop"


def start_service(
    plane: CrosswayServer, name: str, instance: str, cache: Path
) -> subprocess.Popen[bytes]:
    port = free_port()
    env = {
        **os.environ,
        "CROSSWAY_URL": plane.url,
        "CROSSWAY_SERVICE": name,
        "CROSSWAY_INSTANCE_ID": instance,
        "CROSSWAY_PORT": str(port),
        "CROSSWAY_ADDRESS": "127.0.0.1",
        "CROSSWAY_CACHE_DIR": str(cache / instance),
    }
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(SHOP), f"{name}:app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(argv, env=env)


def publish(plane: CrosswayServer, content: str) -> None:
    url = f"{plane.url}/v1/config/default/shop/orders.yaml"
    httpx2.put(url, content=content, timeout=5).raise_for_status()


async def wait_for(client: crossway.Client, service: str, count: int) -> None:
    deadline = time.monotonic() + 60
    await client.discovery.instances(service)  # subscribes: the cache follows from here
    while len(client.discovery.peek(service) or []) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{service}: {count} instances did not register in time")
        await asyncio.sleep(0.1)


async def settings_version(http: httpx2.AsyncClient, above: int) -> dict[str, object]:
    for _ in range(100):
        current: dict[str, object] = (await http.get("http://orders/settings")).json()
        if int(str(current["version"])) > above or int(str(current["rejected"])) > 0:
            return current
        await asyncio.sleep(0.05)
    raise SystemExit("orders did not see the config change")


async def shop(plane: CrosswayServer, cache: Path) -> None:
    async with crossway.Client(url=plane.url, register=False, cache_dir=cache / "me") as client:
        await wait_for(client, "catalog", 2)
        await wait_for(client, "orders", 1)
        print("registered:", [i.id for i in client.discovery.peek("catalog") or []], "+ orders-1")
        async with client.http(timeout=10.0) as http:
            for item in (1, 2, 3, 1):
                quote = (
                    await http.get(f"http://orders/quote/{item}", params={"quantity": 2})
                ).json()
                via = quote["catalog_instance"]
                print(f"  {quote['item']:<10} x2 = {quote['total']:>6}  via {via}")

            publish(plane, "discount_percent: 10\nbanner: Spring sale\n")
            started = time.perf_counter()
            seen = await settings_version(http, above=1)
            took = time.perf_counter() - started
            print(f"config v{seen['version']} live in orders after {took:.3f}s")
            quote = (await http.get("http://orders/quote/1", params={"quantity": 2})).json()
            print(f"  {quote['item']} x2 = {quote['total']} ({quote['banner']})")

            publish(plane, "discount_percent: 500\n")  # valid YAML, refused by the model
            refused = await settings_version(http, above=2)
            print(
                f"a bad version was refused: {refused['rejected']} refusal(s), still "
                f"{refused['discount_percent']}% off (v{refused['version']})"
            )


def main() -> None:
    plane = start_server(store="memory")
    cache = Path(tempfile.mkdtemp(prefix="crossway-shop-"))
    services: list[subprocess.Popen[bytes]] = []
    try:
        publish(plane, "discount_percent: 0\nbanner: Welcome\n")
        services = [
            start_service(plane, "catalog", "catalog-1", cache),
            start_service(plane, "catalog", "catalog-2", cache),
            start_service(plane, "orders", "orders-1", cache),
        ]
        asyncio.run(shop(plane, cache))
    finally:
        for process in services:
            process.terminate()  # SIGTERM: uvicorn shuts down, the lifespan deregisters
        for process in services:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        plane.stop()


if __name__ == "__main__":
    main()
