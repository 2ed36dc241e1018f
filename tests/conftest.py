"""Shared test fixtures.

Servers that a test needs (Redis, etcd, PostgreSQL …) are either started by the
test itself (etcd: a private instance on free ports) or expected on loopback.
`crossway.testing.services.require` skips a test whose server is absent
locally, and fails it when CI=true.

`store` runs a test once per backend (memory, sqlite, etcd). All etcd tests of
a session share one private etcd, so each test keeps to key names of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from crossway.store import Store
from crossway.testing.etcd import EtcdProcess, etcd_binary, start_etcd
from crossway.testing.services import port_open, require
from crossway.testing.stores import etcd_endpoint_of, open_backend

BACKENDS = ["memory", "sqlite", "etcd"]


@pytest.fixture(scope="session")
def redis_url() -> str:
    require(port_open("127.0.0.1", 6379), "Redis is not listening on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdProcess]:
    """One private etcd on free loopback ports for the whole test session.

    It runs without fsync: the tests check Crossway's behaviour, not etcd's
    durability, and fsync on a shared disk only makes them slow."""
    require(etcd_binary() is not None, "etcd is not installed (run scripts/ensure-etcd)")
    etcd = start_etcd(unsafe_no_fsync=True)
    yield etcd
    etcd.stop()


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_backend(request.param, tmp_path, etcd_endpoint_of(request))
    try:
        yield s
    finally:
        await s.close()
