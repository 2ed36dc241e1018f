"""Per-key limiting: independence of keys, LRU eviction, bounded memory, the fronts."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.resilience.gcra import GCRA
from crossway.resilience.keyed import AsyncKeyedLimiter, KeyedLimiter, SyncKeyedLimiter
from crossway.resilience.limiter import RateLimited, RateLimiter
from crossway.resilience.token_bucket import TokenBucket


def bucket(_key: object) -> RateLimiter:
    return TokenBucket(rate=1, burst=2)


def test_each_key_has_its_own_budget() -> None:
    keyed: KeyedLimiter[str] = KeyedLimiter(bucket)
    assert [keyed.try_acquire("a", 0.0).allowed for _ in range(3)] == [True, True, False]
    assert keyed.try_acquire("b", 0.0).allowed
    assert len(keyed) == 2


def test_factory_can_give_a_key_its_own_limit() -> None:
    def per_tier(key: str) -> RateLimiter:
        return GCRA(rate=1, burst=5 if key.startswith("vip:") else 1)

    keyed: KeyedLimiter[str] = KeyedLimiter(per_tier)
    assert sum(keyed.try_acquire("vip:ann", 0.0).allowed for _ in range(10)) == 5
    assert sum(keyed.try_acquire("bob", 0.0).allowed for _ in range(10)) == 1


def test_least_recently_used_key_is_evicted_first() -> None:
    keyed: KeyedLimiter[str] = KeyedLimiter(bucket, max_keys=2)
    keyed.try_acquire("a", 0.0)
    keyed.try_acquire("b", 0.0)
    keyed.try_acquire("a", 0.0)  # a is now the most recent
    keyed.try_acquire("c", 0.0)
    assert "a" in keyed
    assert "c" in keyed
    assert "b" not in keyed
    keyed.forget("a")
    assert "a" not in keyed
    with pytest.raises(ValueError, match="max_keys"):
        KeyedLimiter(bucket, max_keys=0)


@settings(max_examples=200, deadline=None)
@given(
    max_keys=st.integers(min_value=1, max_value=12),
    keys=st.lists(st.integers(min_value=0, max_value=40), max_size=300),
)
def test_memory_stays_bounded_and_matches_an_lru_model(max_keys: int, keys: list[int]) -> None:
    made: list[int] = []

    def factory(key: int) -> RateLimiter:
        made.append(key)
        return TokenBucket(rate=10, burst=1)

    keyed: KeyedLimiter[int] = KeyedLimiter(factory, max_keys=max_keys)
    model: OrderedDict[int, None] = OrderedDict()
    for step, key in enumerate(keys):
        keyed.try_acquire(key, step * 0.01)
        model[key] = None
        model.move_to_end(key)
        if len(model) > max_keys:
            model.popitem(last=False)
        assert len(keyed) <= max_keys
        assert all(k in keyed for k in model)
    # A limiter is made exactly when a key is new or was evicted: no leaks, no waste.
    expected_made = 0
    seen: OrderedDict[int, None] = OrderedDict()
    for key in keys:
        if key not in seen:
            expected_made += 1
        seen[key] = None
        seen.move_to_end(key)
        if len(seen) > max_keys:
            seen.popitem(last=False)
    assert len(made) == expected_made


@settings(max_examples=200, deadline=None)
@given(
    max_keys=st.integers(min_value=2, max_value=40),
    data=st.data(),
)
def test_hot_keys_survive_any_stream_of_cold_keys_in_bounded_memory(
    max_keys: int, data: st.DataObject
) -> None:
    # Between two uses of a hot key come fewer than max_keys other keys, so the
    # least-recently-used order must never evict it, however many cold keys pass.
    hot_count = data.draw(st.integers(min_value=1, max_value=max_keys // 2), label="hot")
    rounds = data.draw(
        st.lists(st.integers(min_value=0, max_value=max_keys - hot_count), max_size=40),
        label="cold keys per round",
    )
    made: list[int] = []

    def factory(key: int) -> RateLimiter:
        made.append(key)
        return TokenBucket(rate=10, burst=1)

    keyed: KeyedLimiter[int] = KeyedLimiter(factory, max_keys=max_keys)
    hot = list(range(hot_count))
    cold = iter(range(hot_count, 1 << 30))
    step = 0
    for cold_in_round in rounds:
        for key in hot + [next(cold) for _ in range(cold_in_round)]:
            keyed.try_acquire(key, step * 0.001)
            step += 1
            assert len(keyed) <= max_keys
    if rounds:
        assert sorted(k for k in made if k < hot_count) == hot  # each made once, never evicted
        assert all(k in keyed for k in hot)


@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["hit", "forget"]), st.integers(min_value=0, max_value=3)),
        max_size=200,
    )
)
def test_forget_then_hit_makes_a_fresh_limiter_even_for_the_most_recent_key(
    ops: list[tuple[str, int]],
) -> None:
    made: list[int] = []

    def factory(key: int) -> RateLimiter:
        made.append(key)
        return TokenBucket(rate=10, burst=1)

    keyed: KeyedLimiter[int] = KeyedLimiter(factory, max_keys=8)
    live: set[int] = set()
    expected_made = 0
    for step, (op, key) in enumerate(ops):
        if op == "forget":
            keyed.forget(key)
            live.discard(key)
            continue
        if key not in live:
            expected_made += 1
            live.add(key)
        keyed.try_acquire(key, step * 0.01)
    assert len(made) == expected_made
    assert {k for k in range(4) if k in keyed} == live


def test_sync_front_raises_when_refused_and_decorates_by_key() -> None:
    clock = VirtualClock()
    front = SyncKeyedLimiter(KeyedLimiter(bucket), clock=clock)
    front.acquire("u1")
    front.acquire("u1")
    with pytest.raises(RateLimited) as refused:
        front.acquire("u1")
    assert refused.value.retry_after == pytest.approx(1.0)
    assert front.try_acquire("u2").allowed

    @front.limit(key=lambda user, *_: user)
    def handler(user: str, item: int) -> str:
        return f"{user}:{item}"

    assert handler("u3", 1) == "u3:1"
    assert handler("u3", 2) == "u3:2"
    with pytest.raises(RateLimited):
        handler("u3", 3)
    clock.advance(1.0)
    assert handler("u3", 4) == "u3:4"


def test_sync_front_sleeps_out_a_queueing_wait() -> None:
    slept: list[float] = []
    keyed: KeyedLimiter[str] = KeyedLimiter(lambda _k: TokenBucket(rate=10, burst=1, max_wait=1))
    front = SyncKeyedLimiter(keyed, clock=VirtualClock(), sleep=slept.append)
    for _ in range(3):
        front.acquire("k")
    assert slept == [pytest.approx(0.1), pytest.approx(0.2)]


async def test_async_front_awaits_the_wait_and_decorates() -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    keyed: KeyedLimiter[str] = KeyedLimiter(lambda _k: GCRA(rate=4, burst=1, max_wait=0.3))
    front = AsyncKeyedLimiter(keyed, clock=VirtualClock(), sleep=fake_sleep)

    @front.limit(key=lambda tenant: tenant)
    async def work(tenant: str) -> str:
        return tenant.upper()

    assert await work("a") == "A"
    assert await work("a") == "A"
    with pytest.raises(RateLimited):
        await work("a")
    assert await work("b") == "B"
    assert slept == [pytest.approx(0.25)]
    assert (await front.acquire("c")).allowed
    assert not front.try_acquire("a").allowed
