"""Fixtures for coordination tests: the domain runs on every store backend.

`store` is parametrized over memory, sqlite and etcd (one private etcd for the
whole session; each test gets fresh names through `names`, since the keys of
one test stay visible to the next on a shared etcd).
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from crossway.coord import Coordination
from crossway.store import Store
from crossway.store.memory import open_memory_store
from crossway.store.sqlite import open_sqlite_store
from crossway.testing.etcd import EtcdProcess, etcd_binary, start_etcd
from crossway.testing.services import require

_counter = itertools.count()


def etcd_backend_built() -> bool:
    return importlib.util.find_spec("crossway.store.etcd") is not None


@pytest.fixture(scope="session")
def coord_etcd() -> Iterator[EtcdProcess]:
    require(etcd_binary() is not None, "etcd is not installed (run scripts/ensure-etcd)")
    etcd = start_etcd(unsafe_no_fsync=True)
    yield etcd
    etcd.stop()


async def open_backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "memory":
        return open_memory_store()
    if kind == "sqlite":
        return await open_sqlite_store(tmp_path / "store.db")
    require(etcd_backend_built(), "the etcd store backend (crossway.store.etcd) is not built yet")
    from crossway.store.etcd import open_etcd_store

    server: EtcdProcess = request.getfixturevalue("coord_etcd")
    store: Store = await open_etcd_store([server.endpoint])
    return store


@pytest.fixture(params=["memory", "sqlite", "etcd"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_backend(request.param, tmp_path, request)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(params=["sqlite", "etcd"])
async def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The backends a deployment runs on, for the heavier tests."""
    s = await open_backend(request.param, tmp_path, request)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def coord(store: Store) -> Coordination:
    return Coordination(store)


@pytest.fixture
def name() -> str:
    """A lock/semaphore/election name of this test's own."""
    return f"t{next(_counter)}-{id(object()):x}"
