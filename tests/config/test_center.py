"""The config center's domain logic on every store backend."""

from __future__ import annotations

import asyncio

import pytest

from crossway.config import Author, ConfigCenter, ContentInvalid, ContentTooLarge, Limits, ref
from crossway.config.model import ConfigRef
from crossway.config.selector import SelectorError
from crossway.config.view import resolve
from crossway.core.clock import VirtualClock
from crossway.core.errors import InvalidArgument, NotFound, PreconditionFailed
from crossway.store import Store

ALICE = Author("alice", "first cut")
BOB = Author("bob")


@pytest.fixture
def orders(namespace: str) -> ConfigRef:
    return ref(namespace, "DEFAULT_GROUP", "orders.yaml")


async def test_publish_versions_and_history(
    center: ConfigCenter, orders: ConfigRef, clock: VirtualClock
) -> None:
    first = await center.publish(orders, "port: 1\n", fmt="yaml", author=ALICE)
    clock.advance(5)
    second = await center.publish(orders, "port: 2\n", fmt="yaml", author=BOB)
    assert (first.version, second.version) == (1, 2)
    assert second.revision > first.revision
    snapshot = await center.read(orders)
    assert snapshot.index == second.revision
    assert snapshot.entry is not None
    assert snapshot.entry.live is not None
    assert snapshot.entry.live.content == "port: 2\n"
    history = await center.history(orders)
    assert [(r.version, r.author, r.message) for r in history] == [
        (2, "bob", ""),
        (1, "alice", "first cut"),
    ]
    assert history[0].time == history[1].time + 5
    assert (await center.version(orders, 1)).content == "port: 1\n"


async def test_same_content_is_not_a_new_version(center: ConfigCenter, orders: ConfigRef) -> None:
    first = await center.publish(orders, "a: 1\n", fmt="yaml", author=ALICE)
    again = await center.publish(orders, "a: 1\n", fmt="yaml", author=BOB)
    assert (again.version, again.changed, again.revision) == (1, False, first.revision)
    as_text = await center.publish(orders, "a: 1\n", fmt="text", author=BOB)
    assert (as_text.version, as_text.changed) == (2, True)


async def test_if_version_is_compare_and_set(center: ConfigCenter, orders: ConfigRef) -> None:
    await center.publish(orders, "a: 1\n", fmt="yaml", author=ALICE, if_version=0)
    with pytest.raises(PreconditionFailed) as caught:
        await center.publish(orders, "a: 2\n", fmt="yaml", author=BOB, if_version=0)
    assert caught.value.details["version"] == 1
    await center.publish(orders, "a: 2\n", fmt="yaml", author=BOB, if_version=1)
    assert len(await center.history(orders)) == 2


async def test_concurrent_cas_writers_one_wins(center: ConfigCenter, orders: ConfigRef) -> None:
    await center.publish(orders, "a: 0\n", fmt="yaml", author=ALICE)
    results = await asyncio.gather(
        *(
            center.publish(orders, f"a: {i}\n", fmt="yaml", author=BOB, if_version=1)
            for i in range(1, 6)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, PreconditionFailed)]
    assert len(won) == 1
    assert len(lost) == 4
    assert [r.version for r in await center.history(orders)] == [2, 1]


async def test_concurrent_writers_never_share_a_version(
    center: ConfigCenter, orders: ConfigRef
) -> None:
    await asyncio.gather(
        *(center.publish(orders, f"a: {i}\n", fmt="yaml", author=BOB) for i in range(6))
    )
    history = await center.history(orders)
    assert [r.version for r in history] == [6, 5, 4, 3, 2, 1]
    assert len({r.content for r in history}) == 6


@pytest.mark.parametrize(
    ("fmt", "content"),
    [("yaml", "a: [1,\n"), ("json", "{nope}"), ("toml", "x = = 1"), ("properties", "a=\\u1")],
)
async def test_invalid_content_stores_nothing(
    center: ConfigCenter, store: Store, orders: ConfigRef, fmt: str, content: str
) -> None:
    before = await store.revision()
    with pytest.raises(ContentInvalid) as caught:
        await center.publish(orders, content, fmt=fmt, author=ALICE)  # type: ignore[arg-type]
    assert caught.value.line is not None
    assert await store.revision() == before
    assert (await center.read(orders)).entry is None


async def test_limits(store: Store, orders: ConfigRef) -> None:
    center = ConfigCenter(store, limits=Limits(max_content=10, max_txn_bytes=400))
    with pytest.raises(ContentTooLarge):
        await center.publish(orders, "x" * 11, fmt="text", author=ALICE)
    center = ConfigCenter(store, limits=Limits(max_content=1000, max_txn_bytes=400))
    with pytest.raises(ContentTooLarge) as caught:
        await center.publish(orders, "\x01" * 100, fmt="text", author=ALICE)
    assert caught.value.status == 413
    assert (await center.read(orders)).entry is None


async def test_author_and_message_are_checked(center: ConfigCenter, orders: ConfigRef) -> None:
    with pytest.raises(InvalidArgument):
        await center.publish(orders, "a", fmt="text", author=Author(""))
    with pytest.raises(InvalidArgument):
        await center.publish(orders, "a", fmt="text", author=Author("x", "m" * 2000))


async def test_rollback_makes_a_new_version(center: ConfigCenter, orders: ConfigRef) -> None:
    await center.publish(orders, "a: 1\n", fmt="yaml", author=ALICE)
    await center.publish(orders, "a: 2\n", fmt="yaml", author=ALICE)
    rolled = await center.rollback(orders, 1, author=BOB)
    assert rolled.version == 3
    history = await center.history(orders)
    assert [(r.version, r.content) for r in history] == [
        (3, "a: 1\n"),
        (2, "a: 2\n"),
        (1, "a: 1\n"),
    ]
    assert history[0].message == "rollback to version 1"
    with pytest.raises(NotFound):
        await center.rollback(orders, 9, author=BOB)
    with pytest.raises(PreconditionFailed):
        await center.rollback(orders, 2, author=BOB, if_version=2)


async def test_diff(center: ConfigCenter, orders: ConfigRef) -> None:
    await center.publish(orders, "a: 1\nb: 2\n", fmt="yaml", author=ALICE)
    await center.publish(orders, "a: 1\nb: 3", fmt="yaml", author=ALICE)
    text = await center.diff(orders, 1, 2)
    assert f"--- {orders}@1" in text
    assert f"+++ {orders}@2" in text
    assert "-b: 2\n" in text
    assert "+b: 3\n\\ No newline at end of file\n" in text
    assert await center.diff(orders, None, None) == text
    assert await center.diff(orders, 2, 2) == ""
    with pytest.raises(NotFound):
        await center.diff(orders, 0, 2)


async def test_delete_is_a_version(center: ConfigCenter, orders: ConfigRef) -> None:
    await center.publish(orders, "a: 1\n", fmt="yaml", author=ALICE)
    deleted = await center.delete(orders, author=BOB)
    assert deleted.version == 2
    snapshot = await center.read(orders)
    assert resolve(snapshot, {}) is None
    assert snapshot.index == deleted.revision
    with pytest.raises(NotFound):
        await center.delete(orders, author=BOB)
    with pytest.raises(InvalidArgument):
        await center.rollback(orders, 2, author=BOB)
    restored = await center.rollback(orders, 1, author=BOB)
    assert restored.version == 3
    assert [r.deleted for r in await center.history(orders)] == [False, True, False]


async def test_beta_is_served_only_to_matching_labels(
    center: ConfigCenter, orders: ConfigRef
) -> None:
    await center.publish(orders, "a: 1\n", fmt="yaml", author=ALICE)
    beta = await center.publish_beta(
        orders, "a: 2\n", fmt="yaml", selector="zone in (eu-1), canary", author=BOB
    )
    assert beta.beta
    assert beta.selector == "zone in (eu-1),canary"
    assert beta.version == 1
    snapshot = await center.read(orders)
    matching = resolve(snapshot, {"zone": "eu-1", "canary": "true"})
    other = resolve(snapshot, {"zone": "us-1", "canary": "true"})
    assert matching is not None
    assert matching.beta
    assert matching.content == "a: 2\n"
    assert other is not None
    assert not other.beta
    assert other.content == "a: 1\n"
    assert matching.index == other.index == snapshot.index == beta.revision
    assert len(await center.history(orders)) == 1, "a beta is not a version"


async def test_promote_and_abandon(center: ConfigCenter, orders: ConfigRef) -> None:
    await center.publish(orders, "a: 1\n", fmt="yaml", author=ALICE)
    with pytest.raises(NotFound):
        await center.promote(orders, author=BOB)
    with pytest.raises(NotFound):
        await center.abandon(orders)
    await center.publish_beta(orders, "a: 2\n", fmt="yaml", selector="canary", author=BOB)
    abandoned = await center.abandon(orders)
    snapshot = await center.read(orders)
    assert snapshot.entry is not None
    assert snapshot.entry.beta is None
    assert snapshot.index == abandoned.revision
    view = resolve(snapshot, {"canary": "1"})
    assert view is not None
    assert view.content == "a: 1\n"
    await center.publish_beta(orders, "a: 3\n", fmt="yaml", selector="canary", author=BOB)
    promoted = await center.promote(orders, author=Author("alice"))
    assert promoted.version == 2
    assert not promoted.beta
    snapshot = await center.read(orders)
    assert snapshot.entry is not None
    assert snapshot.entry.beta is None
    assert (await center.history(orders))[0].message == "promote beta (canary)"
    everyone = resolve(snapshot, {})
    assert everyone is not None
    assert everyone.content == "a: 3\n"


async def test_beta_without_a_release(center: ConfigCenter, orders: ConfigRef) -> None:
    await center.publish_beta(orders, "a: 2\n", fmt="yaml", selector="canary", author=BOB)
    snapshot = await center.read(orders)
    assert resolve(snapshot, {}) is None
    view = resolve(snapshot, {"canary": ""})
    assert view is not None
    assert view.version == 0
    with pytest.raises(NotFound):
        await center.history(orders)


async def test_beta_checks_selector_and_content(center: ConfigCenter, orders: ConfigRef) -> None:
    with pytest.raises(SelectorError):
        await center.publish_beta(orders, "a: 1\n", fmt="yaml", selector="", author=BOB)
    with pytest.raises(ContentInvalid):
        await center.publish_beta(orders, "a: [\n", fmt="yaml", selector="x", author=BOB)
    assert (await center.read(orders)).entry is None


async def test_names_are_checked(namespace: str) -> None:
    for bad in (("", "g", "k"), ("n", "g/x", "k"), ("n", "g", "history"), ("n", "_g", "k")):
        with pytest.raises(InvalidArgument):
            ref(*bad)
    assert str(ref(namespace, "g", "application-prod.properties")).endswith(
        "/g/application-prod.properties"
    )
