"""Fixtures for the config center: every domain and HTTP test runs on each store.

`store` is parametrized over memory, sqlite and etcd (one private etcd for the
session). Keys of one test stay visible to the next on the shared etcd, so
each test works in a config namespace of its own (`namespace`).
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from starlette.applications import Starlette

from crossway.config import ConfigCenter
from crossway.core.clock import VirtualClock
from crossway.server.api import config as config_api
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.store import Store
from crossway.store.memory import open_memory_store
from crossway.store.sqlite import open_sqlite_store
from crossway.testing.etcd import EtcdProcess, etcd_binary, start_etcd
from crossway.testing.services import require

_counter = itertools.count()


@pytest.fixture(scope="session")
def config_etcd() -> Iterator[EtcdProcess]:
    require(etcd_binary() is not None, "etcd is not installed (run scripts/ensure-etcd)")
    etcd = start_etcd(unsafe_no_fsync=True)
    yield etcd
    etcd.stop()


async def open_backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "memory":
        return open_memory_store()
    if kind == "sqlite":
        return await open_sqlite_store(tmp_path / "store.db")
    require(
        importlib.util.find_spec("crossway.store.etcd") is not None,
        "the etcd store backend (crossway.store.etcd) is not built yet",
    )
    from crossway.store.etcd import open_etcd_store

    server: EtcdProcess = request.getfixturevalue("config_etcd")
    store: Store = await open_etcd_store([server.endpoint])
    return store


@pytest.fixture(params=["memory", "sqlite", "etcd"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_backend(request.param, tmp_path, request)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def center(store: Store, clock: VirtualClock) -> ConfigCenter:
    return ConfigCenter(store, clock=clock)


@pytest.fixture
def namespace() -> str:
    """A config namespace of this test's own."""
    return f"t{next(_counter)}-{id(object()):x}"


@dataclass
class Plane:
    """A started control plane app with only the config API, and its context."""

    ctx: ServerContext
    app: Starlette


@pytest.fixture
async def plane(store: Store, clock: VirtualClock) -> AsyncIterator[Plane]:
    ctx = ServerContext(store=store, clock=clock)
    app = create_app(ctx, providers=(config_api.routes,))
    await ctx.start()
    try:
        yield Plane(ctx, app)
    finally:
        await ctx.close()


@pytest.fixture
async def client(plane: Plane) -> AsyncIterator[httpx2.AsyncClient]:
    transport = httpx2.ASGITransport(app=plane.app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://cp") as http:
        yield http
