"""Fixtures for in-process server tests: a memory store, a context, an ASGI client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest

from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.settings import ServerSettings
from crossway.store.local import LocalStore
from crossway.store.memory import open_memory_store


@pytest.fixture
async def store() -> AsyncIterator[LocalStore]:
    s = open_memory_store()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def settings() -> ServerSettings:
    return ServerSettings(store="memory", ready_timeout=0.2, sse_heartbeat=15.0)


@pytest.fixture
def ctx(store: LocalStore, settings: ServerSettings) -> ServerContext:
    return ServerContext(store=store, settings=settings)


@pytest.fixture
async def client(ctx: ServerContext) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=create_app(ctx))
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c
