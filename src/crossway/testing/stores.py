"""Open a store of any kind for a test."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from crossway.store.memory import open_memory_store
from crossway.store.protocol import Store
from crossway.store.sqlite import open_sqlite_store


async def open_backend(kind: str, directory: Path, etcd_endpoint: Callable[[], str]) -> Store:
    """A fresh `memory` or `sqlite` store (a file under `directory`), or an
    `etcd` store on the endpoint `etcd_endpoint()` returns (called only then,
    so a test session starts etcd only when an etcd test runs)."""
    if kind == "memory":
        return open_memory_store()
    if kind == "sqlite":
        return await open_sqlite_store(directory / "store.db")
    if kind == "etcd":
        from crossway.store.etcd import open_etcd_store

        return await open_etcd_store([etcd_endpoint()])
    raise ValueError(f"unknown store kind {kind!r}")


def etcd_endpoint_of(request: Any) -> Callable[[], str]:
    """For pytest: the endpoint of the session's `etcd_server` fixture, started
    only when first asked for."""

    def endpoint() -> str:
        return str(request.getfixturevalue("etcd_server").endpoint)

    return endpoint
