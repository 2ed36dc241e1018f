"""Import as one transaction, export and listings, on every store backend."""

from __future__ import annotations

import pytest

from crossway.config import Author, ConfigCenter, ImportEntry, ImportRequest, Limits, bulk, ref
from crossway.config.bulk import ImportInvalid
from crossway.config.center import ContentTooLarge
from crossway.store import Store

OPS = Author("ops", "from git")


def entry(group: str, key: str, content: str, **more: object) -> ImportEntry:
    return ImportEntry(group=group, key=key, content=content, **more)  # type: ignore[arg-type]


async def test_import_creates_updates_and_skips_unchanged(
    center: ConfigCenter, store: Store, namespace: str
) -> None:
    await center.publish(ref(namespace, "billing", "app.yaml"), "a: 1\n", fmt="yaml", author=OPS)
    await center.publish(ref(namespace, "billing", "keep.json"), "{}", fmt="json", author=OPS)
    request = ImportRequest(
        entries=[
            entry("DEFAULT_GROUP", "application.yml", "server:\n  port: 80\n"),
            entry("billing", "app.yaml", "a: 2\n"),
            entry("billing", "keep.json", "{}"),
            entry("billing", "db.properties", "url=jdbc:x\n"),
            entry("billing", "notes", "free text", format="text"),
        ]
    )
    report = await bulk.import_entries(center, namespace, request, author=OPS)
    actions = {(r.group, r.key): (r.action, r.version) for r in report.entries}
    assert actions == {
        ("DEFAULT_GROUP", "application.yml"): ("created", 1),
        ("billing", "app.yaml"): ("updated", 2),
        ("billing", "keep.json"): ("unchanged", 1),
        ("billing", "db.properties"): ("created", 1),
        ("billing", "notes"): ("created", 1),
    }
    # One transaction: every written entry carries the same mod_revision.
    revisions = set()
    for group, key in (("DEFAULT_GROUP", "application.yml"), ("billing", "db.properties")):
        revisions.add((await center.read(ref(namespace, group, key))).index)
    assert revisions == {report.revision}
    db = (await center.read(ref(namespace, "billing", "db.properties"))).entry
    assert db is not None
    assert db.live is not None
    assert db.live.format == "properties"
    assert db.live.message == "from git"
    again = await bulk.import_entries(center, namespace, request, author=OPS)
    assert {r.action for r in again.entries} == {"unchanged"}
    assert again.revision == await store.revision()


async def test_invalid_import_reports_everything_and_stores_nothing(
    center: ConfigCenter, store: Store, namespace: str
) -> None:
    before = await store.revision()
    request = ImportRequest(
        entries=[
            entry("g", "ok.yaml", "a: 1\n"),
            entry("g", "bad.yaml", "a: [1,\n", source="g/bad.yaml"),
            entry("g", "bad.json", '{"a":}'),
            entry("g", "history", "x"),
            entry("g", "ok.yaml", "a: 2\n"),
        ]
    )
    with pytest.raises(ImportInvalid) as caught:
        await bulk.import_entries(center, namespace, request, author=OPS)
    errors = caught.value.details["errors"]
    assert [e["entry"] for e in errors] == ["g/bad.yaml", "g/bad.json", "g/history", "g/ok.yaml"]
    assert errors[0]["source"] == "g/bad.yaml"
    assert (errors[0]["line"], errors[0]["column"]) == (2, 1)
    assert (errors[1]["line"], errors[1]["column"]) == (1, 6)
    assert errors[2]["field"] == "key"
    assert "more than once" in errors[3]["message"]
    assert "4 of 5 entries are invalid" in caught.value.message
    assert await store.revision() == before


async def test_dry_run_writes_nothing(center: ConfigCenter, store: Store, namespace: str) -> None:
    before = await store.revision()
    request = ImportRequest(entries=[entry("g", "a.yaml", "a: 1\n")], dry_run=True)
    report = await bulk.import_entries(center, namespace, request, author=OPS)
    assert report.dry_run
    assert [(r.action, r.version) for r in report.entries] == [("created", 1)]
    assert await store.revision() == before


async def test_import_beyond_one_transaction_is_refused(store: Store, namespace: str) -> None:
    center = ConfigCenter(store, limits=Limits(max_txn_ops=4))
    request = ImportRequest(entries=[entry("g", f"k{i}.yaml", f"a: {i}\n") for i in range(3)])
    with pytest.raises(ContentTooLarge) as caught:
        await bulk.import_entries(center, namespace, request, author=OPS)
    assert "split it" in caught.value.message
    assert (await bulk.export(center, namespace))[0] == []


async def test_listings_and_export(center: ConfigCenter, namespace: str) -> None:
    await center.publish(ref(namespace, "a", "one.yaml"), "x: 1\n", fmt="yaml", author=OPS)
    await center.publish(ref(namespace, "a", "two.json"), "[]", fmt="json", author=OPS)
    await center.publish(ref(namespace, "b", "gone.yaml"), "x: 1\n", fmt="yaml", author=OPS)
    await center.delete(ref(namespace, "b", "gone.yaml"), author=OPS)
    await center.publish_beta(
        ref(namespace, "b", "beta-only"), "x", fmt="text", selector="canary", author=OPS
    )
    names, _ = await bulk.namespaces(center)
    assert namespace in names
    groups, _ = await bulk.groups(center, namespace)
    assert groups == [{"group": "a", "keys": 2}, {"group": "b", "keys": 1}]
    keys, revision = await bulk.keys(center, namespace, "b")
    assert [(k.key, k.version, k.beta, k.beta_selector) for k in keys] == [
        ("beta-only", 0, True, "canary")
    ]
    assert revision > 0
    exported, _ = await bulk.export(center, namespace)
    assert [(e.group, e.key, e.format, e.version) for e in exported] == [
        ("a", "one.yaml", "yaml", 1),
        ("a", "two.json", "json", 1),
    ]
    only_a, _ = await bulk.export(center, namespace, "a")
    assert len(only_a) == 2
