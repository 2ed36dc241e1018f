"""Route rate limits (ratelimit.py) and the route field that asks for them."""

from __future__ import annotations

import json

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from crossway.core.clock import VirtualClock
from crossway.core.errors import InvalidArgument
from crossway.proxy.errors import render
from crossway.proxy.headers import Peer
from crossway.proxy.http1 import RequestHead
from crossway.proxy.ratelimit import (
    GlobalLimit,
    LocalLimit,
    RateLimitExceeded,
    RateLimits,
    routes_needing_redis,
)
from crossway.proxy.routes.model import decode_route

BACKENDS = {"backends": [{"service": "a"}]}


class FakeStream:
    def __init__(self, address: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.peer = Peer(address)
        self.head = RequestHead(
            method=b"GET",
            target=b"/",
            version=b"1.1",
            headers=headers or [],
            content_length=None,
            chunked=False,
            keep_alive=True,
            expect_continue=False,
            upgrade=None,
            host=None,
        )


def route(**limit: object) -> object:
    return decode_route(json.dumps({**BACKENDS, "rate_limit": limit}))


@pytest.mark.parametrize(
    ("limit", "field"),
    [
        ({"rate": "fast"}, "$.rate_limit.rate"),
        ({"rate": "10/s", "burst": 0}, "$.rate_limit.burst"),
        ({"rate": "10/s", "key": "cookie"}, "$.rate_limit.key"),
        ({"rate": "10/s", "key": "header:bad name"}, "$.rate_limit.key"),
        ({"rate": "10/s", "max_keys": 0}, "$.rate_limit.max_keys"),
        ({"rate": "10/s", "scope": "galactic"}, "$.rate_limit.scope"),
        ({"burst": 3}, "$.rate_limit.rate"),
    ],
)
def test_a_bad_limit_names_its_field(limit: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        route(**limit)
    assert caught.value.details["field"] == field


async def test_local_limit_by_client_ip_answers_429_with_retry_after() -> None:
    clock = VirtualClock()
    limits = RateLimits(clock=clock)
    limit = limits.limit("r", route(rate="1/s", burst=2))  # type: ignore[arg-type]
    assert isinstance(limit, LocalLimit)
    one, two = FakeStream("10.0.0.1"), FakeStream("10.0.0.2")
    await limit.admit(one)
    await limit.admit(one)
    with pytest.raises(RateLimitExceeded) as refused:
        await limit.admit(one)
    assert refused.value.status == 429
    rendered = render(refused.value)
    assert b"retry-after: 1\r\n" in rendered
    assert b'"rate_limited"' in rendered
    await limit.admit(two)  # another client has its own budget
    clock.advance(1.0)
    await limit.admit(one)


async def test_local_limit_by_header_shares_the_budget_of_one_value() -> None:
    limit = RateLimits(clock=VirtualClock()).limit(
        "r",
        route(rate="1/m", burst=1, key="header:X-Api-Key"),  # type: ignore[arg-type]
    )
    assert limit is not None
    await limit.admit(FakeStream("1.1.1.1", [(b"x-api-key", b"k1")]))
    with pytest.raises(RateLimitExceeded) as refused:
        await limit.admit(FakeStream("2.2.2.2", [(b"x-api-key", b"k1")]))
    assert b"retry-after: 60" in render(refused.value)
    await limit.admit(FakeStream("1.1.1.1", [(b"x-api-key", b"k2")]))


def test_a_global_limit_needs_redis() -> None:
    local = route(rate="1/s")
    shared = route(rate="1/s", scope="global")
    assert routes_needing_redis([("a", local), ("b", shared)]) == ["b"]  # type: ignore[list-item]
    limits = RateLimits(clock=VirtualClock())
    assert isinstance(limits.limit("b", shared), LocalLimit)  # type: ignore[arg-type]


class Down:
    """A Redis client whose server is gone."""

    async def evalsha(self, *args: object) -> object:
        raise RedisConnectionError("refused")

    async def script_load(self, script: str) -> object:
        raise RedisConnectionError("refused")


async def test_a_global_limit_fails_open_and_counts_when_redis_is_down() -> None:
    failed: list[str] = []
    limits = RateLimits(clock=VirtualClock(), redis=Down(), failed=failed.append)
    limit = limits.limit("r", route(rate="1/s", burst=1, scope="global"))  # type: ignore[arg-type]
    assert isinstance(limit, GlobalLimit)
    for _ in range(3):
        await limit.admit(FakeStream("1.1.1.1"))
    assert failed == ["r", "r", "r"]
