"""The `store` fixture: every conformance test runs once per backend.

Each test gets a fresh `ns` key prefix, so the etcd backend (one private etcd
per test session) behaves like a fresh store for that test; tests speak of
revisions relative to what they read, never absolute numbers.
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crossway.store import Store
from crossway.store.memory import open_memory_store
from crossway.store.sqlite import open_sqlite_store
from crossway.testing.etcd import EtcdProcess
from crossway.testing.services import require

BACKENDS = ["memory", "sqlite", "etcd"]
_counter = itertools.count()


async def _open(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    if kind == "memory":
        return open_memory_store()
    if kind == "sqlite":
        return await open_sqlite_store(tmp_path / "store.db")
    require(
        importlib.util.find_spec("crossway.store.etcd") is not None,
        "the etcd backend is not built",
    )
    from crossway.store.etcd import open_etcd_store

    server: EtcdProcess = request.getfixturevalue("etcd_server")
    store: Store = await open_etcd_store([server.endpoint])
    return store


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await _open(request.param, tmp_path, request)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def ns() -> str:
    """A key prefix of this test's own."""
    return f"/t{next(_counter)}-{id(object()):x}/"
