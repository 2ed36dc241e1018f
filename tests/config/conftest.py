"""Fixtures for the config center: every domain and HTTP test runs on each store.

`store` is parametrized over memory, sqlite and etcd (one private etcd for the
session). Keys of one test stay visible to the next on the shared etcd, so
each test works in a config namespace of its own (`namespace`).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx2
import pytest
from starlette.applications import Starlette

from crossway.config import ConfigCenter
from crossway.core.clock import VirtualClock
from crossway.server.api import config as config_api
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.store import Store

_counter = itertools.count()


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
