"""/v1/processes on a control plane app, with a real supervisor and a fake registry."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.settings import ServerSettings
from crossway.store.memory import open_memory_store
from crossway.up.api import process_routes
from crossway.up.logs import LogHub
from crossway.up.supervisor import ProcessSpec, Supervisor

pytestmark = pytest.mark.timeout(60)

KEYS = {
    "service",
    "replica",
    "instance_id",
    "pid",
    "port",
    "state",
    "restarts",
    "started_at",
    "last_exit",
}


class NoRegistry:
    async def passing_ids(self, service: str) -> set[str] | None:
        return set()

    async def deregister(self, service: str, instance_id: str) -> None:
        return None


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx2.AsyncClient, Supervisor]]:
    logs = LogHub(tmp_path, terminal=io.StringIO(), colour=False)
    supervisor = Supervisor(logs, NoRegistry(), drain=0.0)
    store = open_memory_store()
    ctx = ServerContext(store=store, settings=ServerSettings(store="memory"))
    app = create_app(ctx, extra=[process_routes(supervisor, logs, project="demo")])
    code = "import time\nprint('ready', flush=True)\ntime.sleep(60)"
    supervisor.add(
        ProcessSpec(
            service="worker",
            argv=(sys.executable, "-c", code),
            cwd=tmp_path,
            listen=False,
            stop_grace=2.0,
        )
    )
    transport = httpx2.ASGITransport(app=app)
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, supervisor
    finally:
        await supervisor.stop_all()
        await store.close()


async def test_the_process_list(api: tuple[httpx2.AsyncClient, Supervisor]) -> None:
    client, _ = api
    body = (await client.get("/v1/processes")).json()
    assert body["project"] == "demo"
    [worker] = body["processes"]
    assert set(worker) == KEYS
    assert (worker["service"], worker["replica"], worker["instance_id"]) == (
        "worker",
        1,
        "worker-1",
    )


async def test_scale_answers_the_new_list_and_refuses_bad_requests(
    api: tuple[httpx2.AsyncClient, Supervisor],
) -> None:
    client, _ = api
    scaled = await client.post("/v1/processes/worker/scale", json={"replicas": 2})
    assert scaled.status_code == 200
    assert [p["replica"] for p in scaled.json()["processes"]] == [1, 2]
    bad = await client.post("/v1/processes/worker/scale", json={"replicas": "two"})
    assert (bad.status_code, bad.json()["error"]["field"]) == (400, "$.replicas")
    many = await client.post("/v1/processes/worker/scale", json={"replicas": 1000})
    assert many.status_code == 400
    assert "between 0 and 64" in many.json()["error"]["message"]
    unknown = await client.post("/v1/processes/nope/scale", json={"replicas": 1})
    assert unknown.status_code == 404
    down = await client.post("/v1/processes/worker/scale", json={"replicas": 1})
    assert [p["replica"] for p in down.json()["processes"]] == [1]


async def test_restart_is_accepted_once_at_a_time(
    api: tuple[httpx2.AsyncClient, Supervisor],
) -> None:
    client, supervisor = api
    assert await supervisor.wait_healthy("worker", 10)
    first = await client.post("/v1/processes/worker/restart")
    assert first.status_code == 202
    second = await client.post("/v1/processes/worker/restart")
    assert second.status_code == 409
    for _ in range(200):
        ids = [p["instance_id"] for p in supervisor.processes("worker")]
        if ids == ["worker-1-2"]:
            break
        await asyncio.sleep(0.05)
    assert [p["instance_id"] for p in supervisor.processes("worker")] == ["worker-1-2"]


async def test_logs_tail_and_its_validation(api: tuple[httpx2.AsyncClient, Supervisor]) -> None:
    client, supervisor = api
    for _ in range(200):
        if supervisor.logs.tail("worker", 1):
            break
        await asyncio.sleep(0.05)
    answer = await client.get("/v1/processes/worker/logs", params={"tail": 5})
    assert answer.status_code == 200
    assert answer.text == "1 | ready\n"
    assert (await client.get("/v1/processes/worker/logs", params={"tail": "x"})).status_code == 400
    assert (await client.get("/v1/processes/nope/logs")).status_code == 404
