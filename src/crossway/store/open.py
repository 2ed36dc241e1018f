"""Open a store by kind: what `crossway server --store` and tests use."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from crossway.core.clock import Clock
from crossway.core.errors import InvalidArgument
from crossway.store.protocol import Store

StoreKind = Literal["memory", "sqlite", "etcd"]


async def open_store(
    kind: str,
    *,
    data_dir: str | Path = ".crossway",
    etcd_endpoints: Sequence[str] = ("http://127.0.0.1:2379",),
    clock: Clock | None = None,
) -> Store:
    """Open a `memory`, `sqlite` (file `store.db` under `data_dir`) or `etcd`
    store. Raises `InvalidArgument` for an unknown kind."""
    if kind == "memory":
        from crossway.store.memory import open_memory_store

        return open_memory_store(clock=clock)
    if kind == "sqlite":
        from crossway.store.sqlite import open_sqlite_store

        return await open_sqlite_store(Path(data_dir) / "store.db", clock=clock)
    if kind == "etcd":
        etcd = importlib.import_module("crossway.store.etcd")
        store: Store = await etcd.open_etcd_store(list(etcd_endpoints))
        return store
    raise InvalidArgument(f"unknown store {kind!r}: use memory, sqlite or etcd", field="store")
