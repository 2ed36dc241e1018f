"""The pure half of following the control plane's routes (the loop itself is
tested against a real control plane in tests/server/test_routes_api.py)."""

from __future__ import annotations

import json

from crossway.proxy.routes.follow import RouteBook

A = b'{"backends": [{"service": "a"}]}'
B = b'{"backends": [{"service": "b"}]}'


def event(key: str, value: bytes = b"", revision: int = 1) -> str:
    return json.dumps({"key": key, "value": value.decode(), "revision": revision})


def test_a_listing_replaces_the_book() -> None:
    book = RouteBook()
    book.replace({"a": A, "b": B}, 7)
    snapshot = book.snapshot()
    assert sorted(snapshot.routes) == ["a", "b"]
    assert snapshot.version == "7"
    found = snapshot.table.match("GET", "/")
    assert found is not None
    assert found.name == "a"


def test_events_put_and_delete_routes() -> None:
    book = RouteBook()
    assert book.apply_event("put", event("/routes/a", A, 3))
    assert book.apply_event("put", event("/routes/b", B, 4))
    assert book.apply_event("delete", event("/routes/a", revision=5))
    assert list(book.routes) == ["b"]
    assert book.revision == 5
    assert not book.apply_event("put", event("/services/x", A))
    assert not book.apply_event("put", event("/routes/a/b", A))
    assert not book.apply_event("put", "not json")


def test_an_unreadable_document_keeps_the_previous_version() -> None:
    book = RouteBook()
    book.apply_event("put", event("/routes/a", A))
    book.apply_event("put", event("/routes/a", b'{"backends": [], "newer": 1}', 2))
    assert book.routes["a"].backends[0].service == "a"
    book.replace({"a": b"{}", "c": b"{}"}, 9)
    assert list(book.routes) == ["a"]


def test_unchanged_routes_keep_their_compiled_form() -> None:
    book = RouteBook()
    book.replace({"a": A, "b": B}, 1)
    first = book.snapshot()
    book.apply_event("put", event("/routes/b", b'{"backends": [{"service": "c"}]}', 2))
    second = book.snapshot()
    assert second.table.routes["a"] is first.table.routes["a"]
    assert second.table.routes["b"] is not first.table.routes["b"]
    assert second.table.routes["b"].route.backends[0].service == "c"
