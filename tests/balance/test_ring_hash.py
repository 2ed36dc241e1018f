from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.balance import NO_CALL, Endpoint, RingHash
from crossway.core.errors import InvalidArgument

from .helpers import endpoints, key_owners, moved_fraction, pick_counts

KEYS = [f"user-{i}" for i in range(20_000)]


def ring(eps: list[Endpoint], **kwargs: int) -> RingHash:
    lb = RingHash(rng=random.Random(1), **kwargs)
    lb.update(eps)
    return lb


def test_empty_and_ring_size() -> None:
    lb = RingHash()
    assert lb.pick("k") is None
    lb.update(endpoints(3))
    assert lb.ring_size >= 1024


def test_same_key_same_endpoint_and_order_of_arrival_does_not_matter() -> None:
    eps = endpoints(8)
    a = ring(eps)
    b = ring(list(reversed(eps)))
    assert key_owners(a, KEYS[:2000]) == key_owners(b, KEYS[:2000])
    assert a.pick(b"user-1") == a.pick("user-1")


def test_removing_one_endpoint_moves_only_its_keys() -> None:
    eps = endpoints(10)
    lb = ring(eps)
    before = key_owners(lb, KEYS)
    lb.update(eps[:3] + eps[4:])
    after = key_owners(lb, KEYS)
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "ep3"}
    assert moved_fraction(before, after) == pytest.approx(1 / 10, abs=0.04)


def test_adding_one_endpoint_takes_about_one_nth_and_only_for_itself() -> None:
    eps = endpoints(11)
    lb = ring(eps[:10])
    before = key_owners(lb, KEYS)
    lb.update(eps)
    after = key_owners(lb, KEYS)
    assert all(after[k] == "ep10" for k in KEYS if before[k] != after[k])
    assert moved_fraction(before, after) == pytest.approx(1 / 11, abs=0.04)


def test_ejection_moves_only_the_ejected_endpoints_keys() -> None:
    lb = ring(endpoints(10))
    before = key_owners(lb, KEYS)
    lb.set_ejected({"ep5"})
    after = key_owners(lb, KEYS)
    assert {k for k in KEYS if before[k] != after[k]} == {k for k in KEYS if before[k] == "ep5"}
    lb.set_ejected(set())
    assert key_owners(lb, KEYS) == before


@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=2, max_value=40), gone=st.integers(min_value=0, max_value=39))
def test_membership_changes_are_minimally_disruptive(n: int, gone: int) -> None:
    eps = endpoints(n)
    lb = ring(eps)
    keys = KEYS[:3000]
    before = key_owners(lb, keys)
    leaving = eps[gone % n].id
    lb.update([e for e in eps if e.id != leaving])
    after = key_owners(lb, keys)
    assert all(before[k] == leaving for k in keys if before[k] != after[k])


def test_load_follows_weights() -> None:
    lb = ring(endpoints(3, weights=[1, 2, 5]))
    owners = key_owners(lb, KEYS)
    shares = [sum(1 for v in owners.values() if v == f"ep{i}") / len(KEYS) for i in range(3)]
    assert shares == pytest.approx([1 / 8, 2 / 8, 5 / 8], abs=0.03)


def test_equal_weights_spread_evenly() -> None:
    owners = key_owners(ring(endpoints(10)), KEYS)
    for i in range(10):
        share = sum(1 for v in owners.values() if v == f"ep{i}") / len(KEYS)
        assert share == pytest.approx(0.1, abs=0.03)


def test_scale_is_sticky_within_the_band_and_reset_outside() -> None:
    lb = ring(endpoints(10), min_ring_size=1024)
    per_endpoint = lb.ring_size // 10
    lb.update(endpoints(6))  # still >= 1024 points: keep the scale
    assert lb.ring_size == 6 * per_endpoint
    lb.update(endpoints(2))  # would fall below the minimum: rescale
    assert lb.ring_size >= 1024
    lb.update(endpoints(200))  # would pass 8 x minimum: rescale
    assert 1024 <= lb.ring_size <= 8 * 1024


def test_unkeyed_picks_spread_over_everyone() -> None:
    lb = ring(endpoints(4))
    assert len(pick_counts(lb, 400)) == 4
    assert lb.begin(endpoints(1)[0]) is NO_CALL


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(InvalidArgument):
        RingHash(min_ring_size=0)
    with pytest.raises(InvalidArgument):
        RingHash(min_ring_size=2048, max_ring_size=1024)
