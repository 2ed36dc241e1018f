"""Register an instance, heartbeat it, watch its service, deregister on exit.

python examples/registry_example.py            # starts a throwaway control plane
CROSSWAY_URL=http://127.0.0.1:7700 python examples/registry_example.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

import httpx2

from crossway.testing.server import start_server


async def watch(client: httpx2.AsyncClient, service: str, after: str, seen: list[str]) -> None:
    """Print every change to `service` as it happens (Server-Sent Events)."""
    params = {"prefix": f"/services/{service}/", "after": after}
    async with client.stream("GET", "/v1/watch", params=params) as stream:
        kind = ""
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind in ("put", "delete"):
                key = json.loads(line.split(":", 1)[1])["key"]
                seen.append(f"{kind} {key}")
                print(f"  watch: {kind:6} {key}")


async def main(url: str) -> None:
    async with httpx2.AsyncClient(base_url=url, timeout=30) as client:
        index = (await client.get("/v1/services/orders")).headers["X-Crossway-Index"]
        seen: list[str] = []
        watcher = asyncio.ensure_future(watch(client, "orders", index, seen))

        body = {"address": "127.0.0.1", "port": 8080, "ttl": "3s", "zone": "eu-1"}
        answer = await client.put("/v1/services/orders/instances/orders-1", json=body)
        lease = answer.json()["lease"]
        print(f"registered orders-1 with lease {lease}")

        for _ in range(3):  # heartbeat every ttl/3
            await asyncio.sleep(1)
            await client.put(f"/v1/leases/{lease}/keepalive")
        found = (await client.get("/v1/services/orders", params={"healthy": "true"})).json()
        print("discovered:", [(i["id"], i["address"], i["port"], i["status"]) for i in found])

        await client.delete("/v1/services/orders/instances/orders-1")
        print("deregistered orders-1")
        await asyncio.sleep(0.5)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        assert seen == [
            "put /services/orders/instances/orders-1",
            "delete /services/orders/instances/orders-1",
        ], seen


if __name__ == "__main__":
    url = os.environ.get("CROSSWAY_URL")
    if url:
        asyncio.run(main(url))
    else:
        server = start_server(store="memory")
        try:
            asyncio.run(main(server.url))
        finally:
            server.stop()
