"""Configuration with history, gray release and live push, over HTTP.

python examples/config_example.py        # serves a throwaway control plane itself
CROSSWAY_URL=http://127.0.0.1:7700 python examples/config_example.py

1. Publish orders.yaml in the prod namespace; a broken edit is refused with
   its line and column and changes nothing; a stale `If-Match` loses.
2. A service instance long-polls the key and holds the new value the moment
   it is published.
3. A gray release: the beta goes only to instances labelled canary=true;
   after a look it is promoted for everyone.
4. History, a diff between two versions, and a rollback — a new version with
   the old content, history untouched.
"""

from __future__ import annotations

import asyncio
import os

import httpx2

from crossway.testing.server import start_server

KEY = "/v1/config/prod/DEFAULT_GROUP/orders.yaml"
ALICE = {"X-Crossway-Author": "alice"}


async def publish(http: httpx2.AsyncClient) -> None:
    first = await http.put(KEY, content=b"pool: 10\ntimeout: 2s\n", headers=ALICE)
    print("published:", first.json())
    broken = await http.put(KEY, content=b"pool: 10\ntimeout: [2s\n", headers=ALICE)
    error = broken.json()["error"]
    print(f"refused ({broken.status_code}): {error['message']}")
    assert (broken.status_code, error["line"], error["column"]) == (400, 3, 1)
    stale = await http.put(KEY, content=b"pool: 5\n", headers={**ALICE, "If-Match": "0"})
    print(f"If-Match 0 on version {first.json()['version']}: {stale.status_code}")
    assert stale.status_code == 412


async def live_push(http: httpx2.AsyncClient) -> None:
    current = await http.get(KEY)
    index = current.headers["X-Crossway-Index"]
    # What an instance does in a loop: ask with the last index, wait for a change.
    poll = asyncio.ensure_future(http.get(KEY, params={"index": index, "wait": "30s"}))
    await asyncio.sleep(0.2)
    await http.put(KEY, content=b"pool: 20\ntimeout: 2s\n", headers=ALICE)
    pushed = await poll
    print(f"pushed to the waiting instance (index {pushed.headers['X-Crossway-Index']}):")
    print("  " + pushed.text.replace("\n", "\n  ").rstrip())
    assert "pool: 20" in pushed.text


async def gray_release(http: httpx2.AsyncClient) -> None:
    await http.put(
        KEY,
        params={"beta": "canary=true"},
        content=b"pool: 40\ntimeout: 1s\n",
        headers={**ALICE, "X-Crossway-Message": "try a bigger pool"},
    )
    canary = await http.get(KEY, headers={"X-Crossway-Labels": "zone=eu-1,canary=true"})
    regular = await http.get(KEY, headers={"X-Crossway-Labels": "zone=eu-1"})
    print(f"canary instance gets beta={canary.headers.get('X-Crossway-Beta')}: {canary.text!r}")
    print(f"regular instance gets the release:  {regular.text!r}")
    assert "pool: 40" in canary.text
    assert "pool: 20" in regular.text
    promoted = await http.post(f"{KEY}/promote", headers={"X-Crossway-Author": "bob"})
    print("promoted for everyone as version", promoted.json()["version"])


async def history(http: httpx2.AsyncClient) -> None:
    for row in (await http.get(f"{KEY}/history")).json():
        print(f"  v{row['version']}  {row['author']:<6} {row['md5'][:8]}  {row['message']}")
    print((await http.get(f"{KEY}/diff", params={"from": 1, "to": 3})).text, end="")
    rolled = await http.post(f"{KEY}/rollback", json={"version": 1}, headers=ALICE)
    print("rolled back to version 1's content as version", rolled.json()["version"])
    assert (await http.get(KEY)).text == "pool: 10\ntimeout: 2s\n"


async def main(url: str) -> None:
    async with httpx2.AsyncClient(base_url=url, timeout=40) as http:
        await publish(http)
        await live_push(http)
        await gray_release(http)
        await history(http)


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
