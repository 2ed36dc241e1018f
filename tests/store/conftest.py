"""Conformance tests run once per backend through the shared `store` fixture
(tests/conftest.py).

Each test gets a fresh `ns` key prefix, so the etcd backend (one private etcd
per test session) behaves like a fresh store for that test; tests speak of
revisions relative to what they read, never absolute numbers.
"""

from __future__ import annotations

import itertools

import pytest

BACKENDS = ["memory", "sqlite", "etcd"]
_counter = itertools.count()


@pytest.fixture
def ns() -> str:
    """A key prefix of this test's own."""
    return f"/t{next(_counter)}-{id(object()):x}/"
