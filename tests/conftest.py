"""Shared test fixtures.

Servers that a test needs (Redis, etcd, PostgreSQL …) are either started by the
test itself (etcd: a private instance on free ports) or expected on loopback.
`crossway.testing.services.require` skips a test whose server is absent
locally, and fails it when CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crossway.testing.etcd import EtcdProcess, etcd_binary, start_etcd
from crossway.testing.services import port_open, require


@pytest.fixture(scope="session")
def redis_url() -> str:
    require(port_open("127.0.0.1", 6379), "Redis is not listening on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdProcess]:
    """One private etcd on free loopback ports for the whole test session."""
    require(etcd_binary() is not None, "etcd is not installed (run scripts/ensure-etcd)")
    etcd = start_etcd()
    yield etcd
    etcd.stop()
