"""Locks with fencing tokens, leader election and a semaphore, over HTTP.

python examples/coordination_example.py        # serves a throwaway control plane itself
CROSSWAY_URL=http://127.0.0.1:7700 python examples/coordination_example.py

1. Two workers want the nightly job. Worker A gets the lock, then stalls (a
   long GC pause) without renewing its session; the session expires, worker B
   is served and writes its report. When A wakes up and writes with its old
   fence, the storage refuses it: that is what fencing tokens are for.
2. Two candidates campaign; the leader's session ends; the standby leads, and
   a blocking query on the leader hears so at once.
3. Three sessions share a semaphore of two places.
"""

from __future__ import annotations

import asyncio
import os

import httpx2

from crossway.testing.server import start_server


class FencedStorage:
    """A storage service that checks fencing tokens: it remembers the highest
    fence that wrote to each object and refuses any lower one."""

    def __init__(self) -> None:
        self.highest: dict[str, int] = {}
        self.objects: dict[str, str] = {}

    def write(self, key: str, value: str, *, fence: int) -> bool:
        if fence < self.highest.get(key, 0):
            return False  # a holder that lost its lock, writing late
        self.highest[key] = fence
        self.objects[key] = value
        return True


async def session(http: httpx2.AsyncClient, name: str, ttl: str) -> str:
    answer = await http.post("/v1/sessions", json={"ttl": ttl, "name": name})
    answer.raise_for_status()
    return str(answer.json()["session"])


async def nightly_job(http: httpx2.AsyncClient) -> None:
    storage = FencedStorage()
    a = await session(http, "worker-a", "2s")
    b = await session(http, "worker-b", "30s")
    held_a = (await http.put(f"/v1/locks/nightly?session={a}")).json()
    print(f"worker A holds the lock, fence {held_a['fence']}")
    # B waits (up to 10 s) while A stalls for longer than its TTL without renewing.
    held_b = (await http.put(f"/v1/locks/nightly?session={b}&wait=10s")).json()
    print(f"A's session expired; worker B holds the lock, fence {held_b['fence']}")
    assert storage.write("report", "B's report", fence=held_b["fence"])
    late = storage.write("report", "A's stale report", fence=held_a["fence"])
    print(f"A wakes up and writes with fence {held_a['fence']}: accepted={late}")
    assert not late
    assert storage.objects["report"] == "B's report"
    await http.delete(f"/v1/locks/nightly?session={b}")
    await http.delete(f"/v1/sessions/{b}")


async def election(http: httpx2.AsyncClient) -> None:
    a = await session(http, "node-a", "10s")
    b = await session(http, "node-b", "10s")
    await http.put(f"/v1/elections/primary?session={a}", json={"value": "10.0.0.1:5432"})
    queued = await http.put(
        f"/v1/elections/primary?session={b}&wait=0&queue=true", json={"value": "10.0.0.2:5432"}
    )
    print(f"node-b is standing by at position {queued.json()['position']}")
    leader = await http.get("/v1/elections/primary/leader")
    print("leader:", leader.json()["leader"]["value"])
    index = leader.headers["X-Crossway-Index"]
    follow = asyncio.ensure_future(http.get(f"/v1/elections/primary/leader?index={index}&wait=30s"))
    await http.delete(f"/v1/sessions/{a}")  # node-a goes away
    new = (await follow).json()["leader"]
    print(f"node-a left; the leader is now {new['value']} (fence {new['fence']})")
    assert new["value"] == "10.0.0.2:5432"
    await http.delete(f"/v1/sessions/{b}")


async def semaphore(http: httpx2.AsyncClient) -> None:
    sessions = [await session(http, f"client-{i}", "10s") for i in range(3)]
    answers = [await http.put(f"/v1/semaphores/pool?session={s}&limit=2&wait=0") for s in sessions]
    print("semaphore of 2:", [a.status_code for a in answers])
    assert [a.status_code for a in answers] == [200, 200, 409]
    for s in sessions:
        await http.delete(f"/v1/sessions/{s}")


async def main(url: str) -> None:
    async with httpx2.AsyncClient(base_url=url, timeout=40) as http:
        await nightly_job(http)
        await election(http)
        await semaphore(http)


def run() -> None:
    url = os.environ.get("CROSSWAY_URL")
    if url:
        asyncio.run(main(url))
        return
    server = start_server(store="memory")  # a throwaway control plane
    try:
        asyncio.run(main(server.url))
    finally:
        server.stop()


if __name__ == "__main__":
    run()
