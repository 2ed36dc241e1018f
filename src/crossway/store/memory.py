"""The memory backend: `LocalStore` with nothing written anywhere. For tests
and for throwaway runs; everything is gone when the process exits."""

from __future__ import annotations

from crossway.core.clock import Clock
from crossway.store.local import LocalStore


def open_memory_store(*, clock: Clock | None = None, retain_revisions: int = 100_000) -> LocalStore:
    """A fresh, empty in-memory store. Must be called with a running loop."""
    return LocalStore(name="memory", clock=clock, retain_revisions=retain_revisions)
