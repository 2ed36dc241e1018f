from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, TypeAdapter

from crossway.core.errors import NotFound
from crossway.sdk.client import Client
from crossway.sdk.config import (
    BoundConfig,
    ConfigNotLoaded,
    ConfigRejected,
    DecodeError,
    Served,
    Tracker,
    Verdict,
    bind,
    bindings,
    decode_content,
    deep_merge,
    nest_dotted,
    read_snapshot,
    snapshot_path,
    start_bindings,
    stop_bindings,
    write_snapshot,
)
from crossway.sdk.control import ControlPlaneUnavailable
from crossway.testing.server import CrosswayServer, shared_server
from crossway.testing.services import free_port


class Pool(BaseModel):
    size: int = Field(10, ge=1)
    timeout: float = 2.0


class Settings(BaseModel):
    greeting: str = "hello"
    pool: Pool = Pool()
    tags: list[str] = []


class Required(BaseModel):
    dsn: str


# -- decoding ------------------------------------------------------------------------------


def test_decodes_every_bindable_format_to_the_same_data() -> None:
    expected = {"greeting": "hi", "pool": {"size": 5}}
    assert decode_content("greeting: hi\npool:\n  size: 5\n", "yaml") == expected
    assert decode_content('{"greeting": "hi", "pool": {"size": 5}}', "json") == expected
    assert decode_content('greeting = "hi"\n[pool]\nsize = 5\n', "toml") == expected
    as_properties = decode_content("greeting=hi\npool.size=5\n", "properties")
    assert as_properties == {"greeting": "hi", "pool": {"size": "5"}}
    assert Settings.model_validate(as_properties).pool.size == 5  # lax: "5" is an int


def test_yaml_documents_merge_later_over_earlier() -> None:
    content = "pool:\n  size: 5\n  timeout: 1\n---\npool:\n  size: 7\ngreeting: hi\n"
    assert decode_content(content, "yaml") == {
        "pool": {"size": 7, "timeout": 1},
        "greeting": "hi",
    }
    assert decode_content("", "yaml") == {}
    with pytest.raises(DecodeError, match="mappings only"):
        decode_content("a: 1\n---\n- 2\n", "yaml")


@pytest.mark.parametrize(
    ("content", "fmt"),
    [
        ("pool: [1\n", "yaml"),
        ("{", "json"),
        ("a = ", "toml"),
        ("a=\\u12", "properties"),
        ("anything", "text"),
        ("a=1\na.b=2\n", "properties"),
        ("a.b=2\na=1\n", "properties"),
    ],
)
def test_undecodable_content_is_a_decode_error(content: str, fmt: str) -> None:
    with pytest.raises(DecodeError):
        decode_content(content, fmt)


def test_deep_merge_and_nesting() -> None:
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}, "d": {"e": 1}}) == {
        "a": {"b": 3, "c": 2},
        "d": {"e": 1},
    }
    assert nest_dotted({"x.y.z": "1", "x.w": "2", "v": "3"}) == {
        "x": {"y": {"z": "1"}, "w": "2"},
        "v": "3",
    }


@settings(deadline=None)  # timing on a shared machine is not what this checks
@given(st.dictionaries(st.from_regex(r"[a-z]{1,3}(\.[a-z]{1,3}){0,2}", fullmatch=True), st.text()))
def test_nesting_keeps_every_value_or_refuses(flat: dict[str, str]) -> None:
    try:
        nested = nest_dotted(flat)
    except DecodeError:
        return
    for dotted, value in flat.items():
        node: Any = nested
        for part in dotted.split("."):
            node = node[part]
        assert node == value


# -- the tracker -----------------------------------------------------------------------------


def served(content: str, version: int, *, fmt: str = "yaml") -> Served:
    return Served(content, fmt, version, f"md5-{hash(content)}")


def test_tracker_accepts_rejects_and_ignores_repeats() -> None:
    tracker = Tracker(TypeAdapter(Settings))
    first = tracker.offer(served("greeting: a\n", 1))
    assert first.verdict is Verdict.ACCEPTED
    assert first.old is None
    assert tracker.value is not None
    assert tracker.value.greeting == "a"
    bad = tracker.offer(served("pool:\n  size: 0\n", 2))
    assert bad.verdict is Verdict.REJECTED
    assert "greater than or equal to 1" in bad.error
    assert tracker.value.greeting == "a"
    assert tracker.current is not None
    assert tracker.current.version == 1
    assert tracker.rejected == 1
    again = tracker.offer(served("greeting: a\n", 3))
    assert again.verdict is Verdict.UNCHANGED
    assert tracker.current.version == 3
    good = tracker.offer(served("greeting: b\n", 4))
    assert good.verdict is Verdict.ACCEPTED
    assert (good.old.greeting, good.new.greeting) == ("a", "b")


def test_tracker_defaults_only_for_models_that_have_them() -> None:
    assert Tracker(TypeAdapter(Settings)).defaults() == Settings()
    assert Tracker(TypeAdapter(Required)).defaults() is None


versions = st.lists(
    st.one_of(
        st.integers(min_value=-3, max_value=30).map(lambda n: f"pool:\n  size: {n}\n"),
        st.sampled_from(["pool: [1\n", "- 1\n", "greeting: [a]\n", "pool:\n  size: x\n"]),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(versions)
def test_value_is_always_the_last_valid_version(contents: list[str]) -> None:
    tracker = Tracker(TypeAdapter(Settings))
    expected: Settings | None = None
    for number, content in enumerate(contents, start=1):
        tracker.offer(served(content, number))
        with contextlib.suppress(Exception):
            expected = Settings.model_validate(decode_content(content, "yaml"))
        assert tracker.value == expected


def test_snapshot_round_trip_and_unreadable_file(tmp_path: Path) -> None:
    path = snapshot_path(tmp_path, "prod", "DEFAULT_GROUP", "orders.yaml")
    assert read_snapshot(path) is None
    original = Served("greeting: x\n", "yaml", 4, "abc", beta=True)
    write_snapshot(path, original)
    assert read_snapshot(path) == original
    path.write_text("{not json")
    assert read_snapshot(path) is None


# -- against a control plane -----------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> CrosswayServer:
    return shared_server("memory")  # one for every module; names here are this module's


@pytest.fixture
async def client(server: CrosswayServer, tmp_path: Path) -> AsyncIterator[Client]:
    made = Client(url=server.url, register=False, cache_dir=tmp_path / "cache", namespace=NS)
    await made.start()
    yield made
    await stop_bindings(made)
    await made.stop()


NS = "sdk-config"
_keys = iter(range(1_000_000))


def fresh_key() -> str:
    return f"k{next(_keys)}-{time.monotonic_ns()}.yaml"


def publish(server: CrosswayServer, key: str, content: str, **params: str) -> dict[str, Any]:
    response = httpx2.put(
        f"{server.url}/v1/config/{NS}/DEFAULT_GROUP/{key}",
        content=content,
        params=params,
        timeout=5,
    )
    assert response.status_code == 200, response.text
    published: dict[str, Any] = response.json()
    return published


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_loads_at_start_and_forwards_attributes(
    server: CrosswayServer, client: Client
) -> None:
    key = fresh_key()
    publish(server, key, "greeting: hi\npool:\n  size: 3\n")
    cfg = bind(client, Settings, key)
    with pytest.raises(ConfigNotLoaded):
        _ = cfg.value
    assert await cfg is cfg
    assert cfg.value.pool.size == 3
    assert cfg.greeting == "hi"
    assert cfg.pool.size == 3
    assert (cfg.version, cfg.source, cfg.beta) == (1, "control-plane", False)
    assert cfg.path == f"{NS}/DEFAULT_GROUP/{key}"
    assert cfg.running
    assert cfg in bindings(client)


async def test_a_change_reaches_the_bound_object_within_a_second(
    server: CrosswayServer, client: Client
) -> None:
    key = fresh_key()
    publish(server, key, "pool:\n  size: 3\n")
    changed = asyncio.Event()
    seen: list[tuple[int, int]] = []

    async def on_change(old: Settings, new: Settings) -> None:
        seen.append((old.pool.size, new.pool.size))
        changed.set()

    cfg = await client.bind(Settings, key, on_change=on_change)
    await asyncio.sleep(0.1)  # the long poll is waiting
    started = time.perf_counter()
    await asyncio.to_thread(publish, server, key, "pool:\n  size: 4\n")
    await asyncio.wait_for(changed.wait(), 1.0)
    assert time.perf_counter() - started < 1.0
    assert cfg.pool.size == 4
    assert cfg.version == 2
    assert seen == [(3, 4)]


async def test_a_bad_version_is_refused_and_the_old_value_kept(
    server: CrosswayServer, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    key = fresh_key()
    publish(server, key, "pool:\n  size: 3\n")
    calls: list[Any] = []
    cfg = await client.bind(Settings, key, on_change=lambda old, new: calls.append(new))
    caplog.set_level(logging.ERROR, logger="crossway.sdk.config")
    publish(server, key, "pool:\n  size: 0\n")  # valid YAML, invalid settings
    await until(lambda: cfg.rejected == 1)
    assert cfg.pool.size == 3
    assert cfg.version == 1
    assert calls == []
    assert "version 2" in caplog.text
    assert "greater than or equal to 1" in caplog.text
    rejected = client.metrics_registry.get_sample_value(
        "crossway_sdk_config_rejected_total",
        {"namespace": NS, "group": "DEFAULT_GROUP", "key": key},
    )
    assert rejected == 1.0
    publish(server, key, "pool:\n  size: 5\n")
    await until(lambda: cfg.version == 3)
    assert cfg.pool.size == 5
    assert len(calls) == 1
    assert cfg.rejected == 1


async def test_sync_callbacks_and_a_failing_one(server: CrosswayServer, client: Client) -> None:
    key = fresh_key()
    publish(server, key, "greeting: a\n")
    order: list[str] = []
    cfg = bind(client, Settings, key)

    @cfg.on_change
    def first(old: Settings, new: Settings) -> None:
        order.append("first")
        raise RuntimeError("boom")

    cfg.on_change(lambda old, new: order.append(f"second:{new.greeting}"))
    async with cfg:
        publish(server, key, "greeting: b\n")
        await until(lambda: len(order) == 2)
        assert order == ["first", "second:b"]
        assert cfg.greeting == "b"
    assert not cfg.running
    assert cfg.greeting == "b"


async def test_gray_release_follows_the_labels(server: CrosswayServer, tmp_path: Path) -> None:
    key = fresh_key()
    publish(server, key, "greeting: stable\n")
    canary = Client(
        url=server.url, register=False, cache_dir=tmp_path, namespace=NS, labels={"canary": "true"}
    )
    plain = Client(url=server.url, register=False, cache_dir=tmp_path / "p", namespace=NS)
    try:
        on_canary = await canary.bind(Settings, key)
        on_plain = await plain.bind(Settings, key)
        publish(server, key, "greeting: beta\n", beta="canary=true")
        await until(lambda: on_canary.greeting == "beta")
        assert on_canary.beta
        assert on_canary.version == 1
        await asyncio.sleep(0.2)
        assert on_plain.greeting == "stable"
        assert not on_plain.beta
        httpx2.post(f"{server.url}/v1/config/{NS}/DEFAULT_GROUP/{key}/promote", timeout=5)
        await until(lambda: on_plain.greeting == "beta")
        await until(lambda: not on_canary.beta)
        assert on_canary.version == on_plain.version == 2
    finally:
        for c in (canary, plain):
            await stop_bindings(c)
            await c.stop()


async def test_a_missing_entry_starts_on_defaults_then_follows(
    server: CrosswayServer, client: Client
) -> None:
    key = fresh_key()
    cfg = await client.bind(Settings, key)
    assert cfg.value == Settings()
    assert cfg.source == "defaults"
    assert cfg.version == 0
    publish(server, key, "greeting: created\n")
    await until(lambda: cfg.greeting == "created")
    assert cfg.source == "control-plane"
    httpx2.delete(f"{server.url}/v1/config/{NS}/DEFAULT_GROUP/{key}", timeout=5)
    await asyncio.sleep(0.2)
    assert cfg.greeting == "created"  # a deletion keeps the values
    with pytest.raises(NotFound):
        await client.bind(Required, fresh_key())


async def test_an_invalid_first_version_fails_start(server: CrosswayServer, client: Client) -> None:
    key = fresh_key()
    publish(server, key, "pool:\n  size: -1\n")
    cfg = bind(client, Settings, key)
    with pytest.raises(ConfigRejected, match="greater than or equal"):
        await cfg.start()
    assert not cfg.running
    publish(server, key, "pool:\n  size: 1\n")
    assert (await cfg.start()).pool.size == 1  # a later start tries again


async def test_restarts_from_the_saved_version_when_the_plane_is_down(
    server: CrosswayServer, tmp_path: Path
) -> None:
    key = fresh_key()
    publish(server, key, "greeting: saved\n")
    first = Client(url=server.url, register=False, cache_dir=tmp_path, namespace=NS)
    cfg = await first.bind(Settings, key)
    await until(lambda: snapshot_path(tmp_path, NS, "DEFAULT_GROUP", key).exists())
    await stop_bindings(first)
    await first.stop()

    down = f"http://127.0.0.1:{free_port()}"
    offline = Client(url=down, register=False, cache_dir=tmp_path, namespace=NS, timeout=0.5)
    try:
        again = await offline.bind(Settings, key)
        assert again.greeting == "saved"
        assert again.source == "snapshot"
        assert again.version == 1
        with pytest.raises(ControlPlaneUnavailable):
            await offline.bind(Required, fresh_key())
        on_defaults = await offline.bind(Settings, fresh_key())
        assert on_defaults.source == "defaults"
    finally:
        await stop_bindings(offline)
        await offline.stop()
    assert cfg.greeting == "saved"


async def test_start_bindings_starts_all_and_stops_all(
    server: CrosswayServer, client: Client
) -> None:
    keys = [fresh_key(), fresh_key()]
    for n, key in enumerate(keys):
        publish(server, key, f"pool:\n  size: {n + 1}\n")
    made: list[BoundConfig[Settings]] = [client.bind(Settings, key) for key in keys]
    await start_bindings(client)
    assert [b.pool.size for b in made] == [1, 2]
    assert all(b.running for b in made)
    await stop_bindings(client)
    assert not any(b.running for b in made)


async def test_follower_ends_when_the_client_stops(server: CrosswayServer, tmp_path: Path) -> None:
    key = fresh_key()
    publish(server, key, "greeting: a\n")
    made = Client(url=server.url, register=False, cache_dir=tmp_path, namespace=NS)
    cfg = await made.bind(Settings, key)
    await made.stop()
    await until(lambda: not cfg.running)
