"""What clients send is checked strictly: fuzzed ids, names, durations and
bodies get a clear 4xx, never a crash."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossway.coord.model import (
    Entry,
    check_name,
    check_ttl,
    decode_entry,
    decode_limit,
    encode,
    parse_session,
)
from crossway.core.errors import InvalidArgument
from crossway.server.api.coord import routes
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.server.settings import ServerSettings
from crossway.store.memory import open_memory_store


@given(st.text(max_size=40))
def test_session_ids_parse_to_a_canonical_form_or_a_clear_error(text: str) -> None:
    try:
        sid, lease = parse_session(text)
    except InvalidArgument as exc:
        field = exc.details["field"]
    else:
        field = None
    if field is not None:
        assert field == "session"
        return
    assert sid == f"{lease:x}"
    assert parse_session(sid) == (sid, lease)
    assert 0 < lease < 2**63


@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_every_lease_id_round_trips(lease: int) -> None:
    assert parse_session(f"{lease:X}") == (f"{lease:x}", lease)


@given(st.text(max_size=140))
def test_names_never_contain_a_slash(text: str) -> None:
    try:
        name = check_name(text)
    except InvalidArgument:
        return
    assert "/" not in name
    assert 1 <= len(name) <= 128


@given(st.text(max_size=20))
def test_ttls_are_bounded(text: str) -> None:
    try:
        seconds = check_ttl(text)
    except InvalidArgument:
        return
    assert 1.0 <= seconds <= 24 * 3600


@given(st.binary(max_size=64))
def test_foreign_values_decode_to_an_anonymous_contender(raw: bytes) -> None:
    entry = decode_entry(raw, "abc")
    assert isinstance(entry, Entry)
    assert decode_limit(raw) is None or isinstance(decode_limit(raw), int)


def test_entries_round_trip() -> None:
    entry = Entry(session="ab", owner="w", value="10.0.0.1", acquired=7)
    assert decode_entry(encode(entry), "ab") == entry


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
paths = st.sampled_from(
    [
        ("POST", "/v1/sessions"),
        ("PUT", "/v1/locks/{}"),
        ("PUT", "/v1/semaphores/{}"),
        ("PUT", "/v1/elections/{}"),
        ("DELETE", "/v1/locks/{}"),
        ("DELETE", "/v1/sessions/{}"),
        ("PUT", "/v1/sessions/{}/renew"),
        ("GET", "/v1/elections/{}/leader"),
    ]
)
query_values = st.text(alphabet="abcdef0123456789smh.-_ ", max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    route=paths,
    name=st.text(alphabet="abz09._-", min_size=1, max_size=8),
    query=st.dictionaries(
        st.sampled_from(["session", "wait", "limit", "queue", "index"]), query_values
    ),
    body=json_values,
)
def test_fuzzed_requests_never_fail_on_the_server(
    route: tuple[str, str], name: str, query: dict[str, str], body: Any
) -> None:
    asyncio.run(_one_request(route, name, query, body))


async def _one_request(route: tuple[str, str], name: str, query: dict[str, str], body: Any) -> None:
    store = open_memory_store()
    app = create_app(
        ServerContext(store=store, settings=ServerSettings(store="memory")), providers=(routes,)
    )
    transport = httpx2.ASGITransport(app=app)
    method, template = route
    if "wait" in query:
        query["wait"] = "0"  # the fuzz is about parsing, not about waiting
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://cp") as http:
            response = await http.request(
                method, template.format(name), params=query, content=json.dumps(body)
            )
    finally:
        await store.close()
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"code", "message"}


@pytest.mark.parametrize("ttl", ["0s", "500ms", "25h"])
def test_ttl_limits(ttl: str) -> None:
    with pytest.raises(InvalidArgument):
        check_ttl(ttl)
