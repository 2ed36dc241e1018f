"""/healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx2

from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.settings import ServerSettings
from crossway.store.errors import StoreUnavailable
from crossway.store.local import LocalStore


class StallingStore:
    """A store whose `revision()` hangs or fails; everything else delegates."""

    def __init__(self, inner: LocalStore, *, fail: bool = False) -> None:
        self._inner = inner
        self._fail = fail
        self.name = inner.name

    async def revision(self) -> int:
        if self._fail:
            raise StoreUnavailable("disk full")
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def _get(ctx: ServerContext, path: str) -> httpx2.Response:
    transport = httpx2.ASGITransport(app=create_app(ctx))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


async def test_healthz(client: httpx2.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_reports_the_store_revision(
    client: httpx2.AsyncClient, store: LocalStore
) -> None:
    await store.put("/a", b"1")
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "store": "memory", "revision": 1}
    assert r.headers["x-crossway-index"] == "1"


async def test_readyz_is_503_when_the_store_does_not_answer_in_time(store: LocalStore) -> None:
    settings = ServerSettings(store="memory", ready_timeout=0.05)
    ctx = ServerContext(store=StallingStore(store), settings=settings)
    r = await _get(ctx, "/readyz")
    assert r.status_code == 503
    assert r.json() == {
        "error": {"code": "unavailable", "message": "the memory store did not answer within 0.05s"}
    }


async def test_readyz_is_503_when_the_store_fails(store: LocalStore) -> None:
    ctx = ServerContext(store=StallingStore(store, fail=True))
    r = await _get(ctx, "/readyz")
    assert r.status_code == 503
    assert "disk full" in r.json()["error"]["message"]


async def test_readyz_is_503_once_shutdown_begins(
    client: httpx2.AsyncClient, ctx: ServerContext
) -> None:
    ctx.begin_shutdown()
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert "shutting down" in r.json()["error"]["message"]
    assert (await client.get("/healthz")).status_code == 200


async def test_metrics_come_from_the_context_registry_only(store: LocalStore) -> None:
    one, two = ServerContext(store=store), ServerContext(store=store)
    await _get(one, "/healthz")
    text = (await _get(two, "/metrics")).text
    assert "http_server_requests_in_flight" in text
    assert 'route="/healthz"' not in text  # `two` has its own counters
