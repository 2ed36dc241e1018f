"""Fixtures for coordination tests: the domain runs on every store backend.

`store` is parametrized over memory, sqlite and etcd (one private etcd for the
whole session; each test gets fresh names through `names`, since the keys of
one test stay visible to the next on a shared etcd).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crossway.coord import Coordination
from crossway.store import Store
from crossway.testing.stores import etcd_endpoint_of, open_backend

_counter = itertools.count()


@pytest.fixture(params=["sqlite", "etcd"])
async def durable_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The backends a deployment runs on, for the heavier tests."""
    s = await open_backend(request.param, tmp_path, etcd_endpoint_of(request))
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
