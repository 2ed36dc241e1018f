"""The push path's shared pieces: one rendering per view, the feed's newest key-value."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx2
import pytest

from crossway.config import Author, ConfigCenter, ConfigFeed, ref
from crossway.config.model import md5_of
from crossway.config.view import View
from crossway.server.api import _config_render
from crossway.server.api._config_render import render
from crossway.store import Store

WHO = Author("t")


def view(content: str = "a: 1\n", *, index: int = 7, beta: bool = False) -> View:
    return View(content, "yaml", 3, md5_of(content), beta, index)


def test_one_rendering_is_shared_by_every_client_of_a_view() -> None:
    first, again = render(view()), render(view())
    assert again is first
    headers = dict(first.headers)
    assert first.body == b"a: 1\n"
    assert headers[b"content-length"] == b"5"
    assert headers[b"x-crossway-index"] == b"7"
    assert headers[b"etag"] == f'"{view().md5}"'.encode()
    assert first.headers[0][0] == b"content-type"
    assert isinstance(first.headers, tuple)


def test_not_modified_carries_no_content_headers() -> None:
    names = {name for name, _ in render(view(index=8)).not_modified}
    assert b"content-type" not in names
    assert b"content-length" not in names
    assert {b"etag", b"x-crossway-index", b"x-crossway-version"} <= names


def test_views_that_differ_render_apart() -> None:
    release, beta, later = render(view()), render(view(beta=True)), render(view(index=9))
    assert (b"x-crossway-beta", b"true") in beta.headers
    assert (b"x-crossway-beta", b"true") not in release.headers
    assert dict(later.headers)[b"x-crossway-index"] == b"9"
    assert render(view("b: 2\n")).body == b"b: 2\n"


def test_the_cache_stays_bounded() -> None:
    for index in range(_config_render.CACHE_SIZE + 10):
        render(view(index=10_000 + index))
    assert len(_config_render._cache) <= _config_render.CACHE_SIZE


@pytest.fixture
async def feed(store: Store) -> AsyncIterator[ConfigFeed]:
    f = ConfigFeed(store)
    await f.start()
    yield f
    await f.close()


async def test_feed_latest_is_the_newest_delivered_change(
    feed: ConfigFeed, center: ConfigCenter, namespace: str
) -> None:
    r = ref(namespace, "g", "latest")
    assert feed.latest(r.entry_key) is None
    start = await center.store.revision()
    waiter = feed.subscribe(r.entry_key, start)
    published = await center.publish(r, "x", fmt="text", author=WHO)
    await asyncio.wait_for(waiter, 10)
    latest = feed.latest(r.entry_key)
    assert latest is not None
    assert latest.mod_revision == published.revision


async def test_chained_long_polls_each_wake_on_the_next_change(
    client: httpx2.AsyncClient, namespace: str
) -> None:
    # From the second poll on, the index is the newest revision the feed has
    # delivered, so the poll parks without reading the store first.
    url = f"/v1/config/{namespace}/DEFAULT_GROUP/chain.yaml"
    first = await client.put(url, content=b"v: 0\n")
    index = first.json()["revision"]
    for n in range(1, 4):
        poll = asyncio.create_task(client.get(url, params={"index": index, "wait": "20s"}))
        await asyncio.sleep(0.05)
        assert not poll.done()
        published = await client.put(url, content=f"v: {n}\n".encode())
        answer = await asyncio.wait_for(poll, 10)
        assert answer.status_code == 200
        assert answer.text == f"v: {n}\n"
        index = int(answer.headers["x-crossway-index"])
        assert index == published.json()["revision"]
