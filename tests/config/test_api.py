"""The config center's HTTP API, end to end through the app, on every store."""

from __future__ import annotations

import asyncio

import httpx2
import pytest
from starlette.types import Message

from crossway.store import Store

from .conftest import Plane

YAML = {"content-type": "application/yaml"}


@pytest.fixture
def base(namespace: str) -> str:
    return f"/v1/config/{namespace}/DEFAULT_GROUP"


async def put(
    client: httpx2.AsyncClient, url: str, content: str, **headers: str
) -> httpx2.Response:
    return await client.put(url, content=content.encode(), headers=headers)


async def test_put_then_get(client: httpx2.AsyncClient, base: str) -> None:
    response = await client.put(
        f"{base}/orders.yaml",
        content=b"port: 8080\n",
        headers={"X-Crossway-Author": "alice", "X-Crossway-Message": "first%20cut"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"version", "revision", "md5"}
    assert body["version"] == 1
    got = await client.get(f"{base}/orders.yaml")
    assert got.status_code == 200
    assert got.text == "port: 8080\n"
    assert got.headers["content-type"] == "application/yaml; charset=utf-8"
    assert got.headers["etag"] == f'"{body["md5"]}"'
    assert got.headers["x-crossway-version"] == "1"
    assert got.headers["x-crossway-index"] == str(body["revision"])
    assert got.headers["x-crossway-format"] == "yaml"
    history = (await client.get(f"{base}/orders.yaml/history")).json()
    assert history[0]["author"] == "alice"
    assert history[0]["message"] == "first cut"


async def test_if_none_match_gives_304(client: httpx2.AsyncClient, base: str) -> None:
    await put(client, f"{base}/a.json", '{"a": 1}')
    etag = (await client.get(f"{base}/a.json")).headers["etag"]
    unchanged = await client.get(f"{base}/a.json", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    other = await client.get(f"{base}/a.json", headers={"If-None-Match": '"nope"'})
    assert other.status_code == 200


@pytest.mark.parametrize(
    ("key", "query", "headers", "content", "line", "column", "fmt"),
    [
        ("a.yaml", "", {}, "a: 1\nb: [2,\n", 3, 1, "yaml"),
        ("a", "?format=yaml", {}, "a: b: c\n", 1, 5, "yaml"),
        ("a", "", {"content-type": "application/json"}, '{\n  "a": 1,\n}', 3, 1, "json"),
        ("a.json", "", {}, "[1, 2", 1, 6, "json"),
        ("a.toml", "", {}, "[x]\ny = \n", 2, 5, "toml"),
        ("a", "", {"content-type": "application/toml"}, "k = 'v", 1, 7, "toml"),
        ("a.properties", "", {}, "k=\\u12", 1, 3, "properties"),
    ],
)
async def test_invalid_content_is_refused_and_nothing_stored(
    client: httpx2.AsyncClient,
    store: Store,
    base: str,
    key: str,
    query: str,
    headers: dict[str, str],
    content: str,
    line: int,
    column: int,
    fmt: str,
) -> None:
    before = await store.revision()
    response = await client.put(f"{base}/{key}{query}", content=content.encode(), headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_content"
    assert (error["line"], error["column"], error["format"]) == (line, column, fmt)
    assert f"line {line}, column {column}" in error["message"]
    assert await store.revision() == before
    assert (await client.get(f"{base}/{key}")).status_code == 404


async def test_not_utf8_is_refused(client: httpx2.AsyncClient, base: str) -> None:
    response = await client.put(f"{base}/a.txt", content=b"ok\n\xff")
    assert response.status_code == 400
    assert (response.json()["error"]["line"], response.json()["error"]["column"]) == (2, 1)


async def test_format_choice(client: httpx2.AsyncClient, base: str) -> None:
    await put(client, f"{base}/plain", "not: [yaml", **{"content-type": "text/plain"})
    assert (await client.get(f"{base}/plain")).headers["x-crossway-format"] == "text"
    await put(client, f"{base}/conf", "a: 1\n", **YAML)
    # Neither ?format, Content-Type nor extension: the entry keeps its format.
    response = await client.put(f"{base}/conf", content=b"a: [", headers={"content-type": ""})
    assert response.status_code == 400
    assert response.json()["error"]["format"] == "yaml"
    assert (await client.put(f"{base}/x?format=xml", content=b"<a/>")).status_code == 400


async def test_if_match_is_compare_and_set(client: httpx2.AsyncClient, base: str) -> None:
    url = f"{base}/cas.yaml"
    assert (await put(client, url, "a: 1\n", **{"If-Match": "0"})).status_code == 200
    conflict = await put(client, url, "a: 2\n", **{"If-Match": "0"})
    assert conflict.status_code == 412
    assert conflict.json()["error"]["version"] == 1
    ok = await put(client, url, "a: 2\n", **{"If-Match": '"1"'})
    assert ok.json()["version"] == 2
    stale = await client.delete(url, headers={"If-Match": "1"})
    assert stale.status_code == 412
    bad = await put(client, url, "a: 3\n", **{"If-Match": "latest"})
    assert bad.status_code == 400
    assert (await client.get(url)).text == "a: 2\n"


async def test_concurrent_if_match_one_winner(client: httpx2.AsyncClient, base: str) -> None:
    url = f"{base}/race.yaml"
    await put(client, url, "n: 0\n")
    answers = await asyncio.gather(
        *(put(client, url, f"n: {i}\n", **{"If-Match": "1"}) for i in range(1, 5))
    )
    assert sorted(r.status_code for r in answers) == [200, 412, 412, 412]


async def test_unchanged_put_is_not_a_version(client: httpx2.AsyncClient, base: str) -> None:
    await put(client, f"{base}/same.yaml", "a: 1\n")
    again = (await put(client, f"{base}/same.yaml", "a: 1\n")).json()
    assert again["version"] == 1
    assert again["changed"] is False


async def test_history_version_diff_rollback(client: httpx2.AsyncClient, base: str) -> None:
    url = f"{base}/app.yaml"
    for n in (1, 2, 3):
        await put(client, url, f"n: {n}\n")
    history = (await client.get(f"{url}/history")).json()
    assert [h["version"] for h in history] == [3, 2, 1]
    assert set(history[0]) == {"version", "md5", "author", "time", "message", "format"}
    old = await client.get(f"{url}?version=1")
    assert old.text == "n: 1\n"
    assert old.headers["x-crossway-version"] == "1"
    assert (await client.get(f"{url}?version=9")).status_code == 404
    diff = await client.get(f"{url}/diff?from=1&to=3")
    assert diff.headers["content-type"].startswith("text/x-diff")
    assert "-n: 1\n+n: 3\n" in diff.text
    default = await client.get(f"{url}/diff")
    assert "-n: 2\n+n: 3\n" in default.text
    rolled = await client.post(
        f"{url}/rollback", json={"version": 1}, headers={"X-Crossway-Author": "bob"}
    )
    assert rolled.json()["version"] == 4
    assert (await client.get(url)).text == "n: 1\n"
    history = (await client.get(f"{url}/history")).json()
    assert len(history) == 4
    assert history[0]["message"] == "rollback to version 1"
    assert history[0]["author"] == "bob"
    assert [h["version"] for h in history[1:]] == [3, 2, 1], "history is never rewritten"
    bad = await client.post(f"{url}/rollback", json={"version": "one"})
    assert bad.status_code == 400
    assert (await client.post(f"{url}/rollback", json={"version": 99})).status_code == 404


async def test_delete_entry(client: httpx2.AsyncClient, base: str) -> None:
    url = f"{base}/gone.yaml"
    await put(client, url, "a: 1\n")
    deleted = await client.delete(url)
    assert deleted.json()["version"] == 2
    missing = await client.get(url)
    assert missing.status_code == 404
    assert missing.headers["x-crossway-index"] == str(deleted.json()["revision"])
    assert (await client.delete(url)).status_code == 404
    assert [h.get("deleted", False) for h in (await client.get(f"{url}/history")).json()] == [
        True,
        False,
    ]


async def test_gray_release(client: httpx2.AsyncClient, base: str) -> None:
    url = f"{base}/feature.yaml"
    await put(client, url, "flag: off\n")
    beta = await put(client, f"{url}?beta=zone%3Deu-1,canary%20in%20(true)", "flag: on\n", **YAML)
    assert beta.status_code == 200, beta.text
    assert beta.json()["beta"] is True
    assert beta.json()["selector"] == "zone=eu-1,canary in (true)"
    labelled = await client.get(url, headers={"X-Crossway-Labels": "zone=eu-1,canary=true"})
    assert labelled.text == "flag: on\n"
    assert labelled.headers["x-crossway-beta"] == "true"
    assert labelled.headers["x-crossway-version"] == "1"
    by_query = await client.get(url, params={"labels": "zone=eu-1,canary=true"})
    assert by_query.text == "flag: on\n"
    for labels in ("zone=eu-1", "zone=us-1,canary=true", ""):
        plain = await client.get(url, headers={"X-Crossway-Labels": labels})
        assert plain.text == "flag: off\n"
        assert "x-crossway-beta" not in plain.headers
    shown = (await client.get(f"{url}/beta")).json()
    assert shown["selector"] == "zone=eu-1,canary in (true)"
    assert shown["content"] == "flag: on\n"
    bad = await client.get(url, headers={"X-Crossway-Labels": "zone"})
    assert bad.status_code == 400
    bad_selector = await put(client, f"{url}?beta=zone%20in%20(a", "flag: x\n")
    assert bad_selector.status_code == 400
    assert bad_selector.json()["error"]["code"] == "invalid_selector"
    assert (await put(client, f"{url}?beta=x", "flag: [\n")).status_code == 400


async def test_promote_and_abandon(client: httpx2.AsyncClient, base: str) -> None:
    url = f"{base}/feature.yaml"
    await put(client, url, "flag: off\n")
    assert (await client.post(f"{url}/promote")).status_code == 404
    assert (await client.delete(f"{url}/beta")).status_code == 404
    await put(client, f"{url}?beta=canary", "flag: on\n")
    assert (await client.delete(f"{url}/beta")).status_code == 200
    assert (await client.get(url, headers={"X-Crossway-Labels": "canary=1"})).text == "flag: off\n"
    assert (await client.get(f"{url}/beta")).status_code == 404
    await put(client, f"{url}?beta=canary", "flag: on\n")
    promoted = await client.post(f"{url}/promote", headers={"X-Crossway-Author": "carol"})
    assert promoted.json()["version"] == 2
    assert (await client.get(url)).text == "flag: on\n"
    assert (await client.get(f"{url}/history")).json()[0]["author"] == "carol"


async def test_long_poll_wakes_on_put(client: httpx2.AsyncClient, base: str) -> None:
    url = f"{base}/live.yaml"
    first = await put(client, url, "v: 1\n")
    index = first.json()["revision"]
    poll = asyncio.create_task(client.get(url, params={"index": index, "wait": "20s"}))
    await asyncio.sleep(0.05)
    assert not poll.done()
    second = await put(client, url, "v: 2\n")
    answer = await asyncio.wait_for(poll, 10)
    assert answer.status_code == 200
    assert answer.text == "v: 2\n"
    assert answer.headers["x-crossway-index"] == str(second.json()["revision"])


async def test_long_poll_returns_at_once_when_behind(client: httpx2.AsyncClient, base: str) -> None:
    url = f"{base}/live.yaml"
    first = await put(client, url, "v: 1\n")
    await put(client, url, "v: 2\n")
    answer = await client.get(url, params={"index": first.json()["revision"], "wait": "30s"})
    assert answer.text == "v: 2\n"


async def test_long_poll_timeout_answers_same_index(client: httpx2.AsyncClient, base: str) -> None:
    url = f"{base}/quiet.yaml"
    index = (await put(client, url, "v: 1\n")).json()["revision"]
    answer = await client.get(url, params={"index": index, "wait": "100ms"})
    assert answer.status_code == 200
    assert answer.text == "v: 1\n"
    assert answer.headers["x-crossway-index"] == str(index)
    etag = answer.headers["etag"]
    again = await client.get(
        url, params={"index": index, "wait": "50ms"}, headers={"If-None-Match": etag}
    )
    assert again.status_code == 304


async def test_long_poll_waits_for_a_key_to_appear(client: httpx2.AsyncClient, base: str) -> None:
    url = f"{base}/later.yaml"
    missing = await client.get(url)
    assert missing.status_code == 404
    assert missing.headers["x-crossway-index"] == "0"
    poll = asyncio.create_task(client.get(url, params={"index": 0, "wait": "20s"}))
    await asyncio.sleep(0.05)
    await put(client, url, "here: true\n")
    assert (await asyncio.wait_for(poll, 10)).text == "here: true\n"


async def test_long_poll_of_matching_clients_wakes_on_beta(
    client: httpx2.AsyncClient, base: str
) -> None:
    url = f"{base}/gray.yaml"
    index = (await put(client, url, "v: 1\n")).json()["revision"]
    etag = (await client.get(url)).headers["etag"]
    canary = {"X-Crossway-Labels": "canary=true", "If-None-Match": etag}
    other = {"X-Crossway-Labels": "zone=eu-1", "If-None-Match": etag}
    params = {"index": index, "wait": "20s"}
    canary_poll = asyncio.create_task(client.get(url, params=params, headers=canary))
    other_poll = asyncio.create_task(client.get(url, params=params, headers=other))
    await asyncio.sleep(0.05)
    beta = await put(client, f"{url}?beta=canary", "v: 2\n")
    woke = await asyncio.wait_for(canary_poll, 10)
    assert woke.text == "v: 2\n"
    assert woke.headers["x-crossway-beta"] == "true"
    assert woke.headers["x-crossway-index"] == str(beta.json()["revision"])
    await asyncio.sleep(0.1)
    assert not other_poll.done(), "a beta for other labels does not wake this client"
    promoted = await client.post(f"{url}/promote")
    woke_other = await asyncio.wait_for(other_poll, 10)
    assert woke_other.text == "v: 2\n"
    assert woke_other.headers["x-crossway-index"] == str(promoted.json()["revision"])


async def test_many_long_polls_share_one_feed(client: httpx2.AsyncClient, base: str) -> None:
    url = f"{base}/fan.yaml"
    index = (await put(client, url, "v: 1\n")).json()["revision"]
    polls = [
        asyncio.create_task(client.get(url, params={"index": index, "wait": "20s"}))
        for _ in range(50)
    ]
    await asyncio.sleep(0.1)
    await put(client, url, "v: 2\n")
    answers = await asyncio.wait_for(asyncio.gather(*polls), 10)
    assert {a.text for a in answers} == {"v: 2\n"}


async def test_listings(client: httpx2.AsyncClient, namespace: str) -> None:
    for group, key in (("a", "one.yaml"), ("a", "two.yaml"), ("b", "three.yaml")):
        await put(client, f"/v1/config/{namespace}/{group}/{key}", "x: 1\n")
    namespaces = await client.get("/v1/config")
    assert namespace in namespaces.json()
    assert int(namespaces.headers["x-crossway-index"]) > 0
    groups = (await client.get(f"/v1/config/{namespace}")).json()
    assert groups == [{"group": "a", "keys": 2}, {"group": "b", "keys": 1}]
    keys = (await client.get(f"/v1/config/{namespace}/a")).json()
    assert [k["key"] for k in keys] == ["one.yaml", "two.yaml"]
    assert set(keys[0]) >= {"key", "version", "format", "md5", "modified", "beta"}
    blocked = await client.get(f"/v1/config/{namespace}/a", params={"index": 10**9, "wait": "1s"})
    assert blocked.status_code == 200


async def test_import_and_export(client: httpx2.AsyncClient, store: Store, namespace: str) -> None:
    entries = [
        {"group": "DEFAULT_GROUP", "key": "application.yml", "content": "a: 1\n"},
        {"group": "orders", "key": "orders.properties", "content": "x=1\n"},
    ]
    body: dict[str, object] = {"message": "from git", "entries": entries}
    imported = await client.post(f"/v1/config/{namespace}/_import", json=body)
    assert imported.status_code == 200, imported.text
    report = imported.json()
    assert [e["action"] for e in report["entries"]] == ["created", "created"]
    exported = (await client.get(f"/v1/config/{namespace}/_export")).json()
    assert [(e["group"], e["key"], e["format"]) for e in exported["entries"]] == [
        ("DEFAULT_GROUP", "application.yml", "yaml"),
        ("orders", "orders.properties", "properties"),
    ]
    before = await store.revision()
    entries.append({"group": "orders", "key": "bad.json", "content": "{", "source": "x"})
    refused = await client.post(f"/v1/config/{namespace}/_import", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["errors"][0]["source"] == "x"
    assert await store.revision() == before
    unknown = await client.post(f"/v1/config/{namespace}/_import", json={"entries": [], "x": 1})
    assert unknown.status_code == 400


@pytest.mark.parametrize("key", ["history", "diff", "rollback", "promote", "beta"])
async def test_reserved_keys_are_refused(client: httpx2.AsyncClient, base: str, key: str) -> None:
    response = await put(client, f"{base}/{key}", "x")
    assert response.status_code == 400
    assert "reserved" in response.json()["error"]["message"]


async def test_bad_names_and_sizes(client: httpx2.AsyncClient, namespace: str) -> None:
    assert (await client.put(f"/v1/config/{namespace}/_g/k", content=b"x")).status_code == 400
    assert (await client.get(f"/v1/config/{namespace}/_import")).status_code == 400
    big = await client.put(f"/v1/config/{namespace}/g/big", content=b"x" * (512 * 1024 + 1))
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "payload_too_large"


async def test_long_polls_answer_at_once_on_shutdown(
    client: httpx2.AsyncClient, plane: Plane, base: str
) -> None:
    url = f"{base}/stop.yaml"
    index = (await put(client, url, "v: 1\n")).json()["revision"]
    polls = [
        asyncio.create_task(client.get(url, params={"index": index, "wait": "60s"}))
        for _ in range(3)
    ]
    await asyncio.sleep(0.05)
    plane.ctx.begin_shutdown()
    answers = await asyncio.wait_for(asyncio.gather(*polls), 5)
    assert {(a.status_code, a.text) for a in answers} == {(200, "v: 1\n")}


async def test_long_poll_ends_when_the_client_goes_away(
    client: httpx2.AsyncClient, plane: Plane, base: str
) -> None:
    url = f"{base}/gone.yaml"
    index = (await put(client, url, "v: 1\n")).json()["revision"]
    left = asyncio.Event()
    sent: list[Message] = []

    async def receive() -> Message:
        if not left.is_set():
            left.set()
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": url,
        "raw_path": url.encode(),
        "query_string": f"index={index}&wait=60s".encode(),
        "headers": [(b"host", b"cp")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("cp", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }
    await asyncio.wait_for(plane.app(scope, receive, send), 5)
    assert sent[0]["status"] == 200


async def test_index_from_another_store_answers_at_once(
    client: httpx2.AsyncClient, base: str
) -> None:
    url = f"{base}/elsewhere.yaml"
    await put(client, url, "v: 1\n")
    answer = await asyncio.wait_for(client.get(url, params={"index": 10**9, "wait": "30s"}), 5)
    assert answer.text == "v: 1\n"
    assert int(answer.headers["x-crossway-index"]) < 10**9
