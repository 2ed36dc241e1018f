from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.balance import NO_CALL, Endpoint, Maglev
from crossway.balance.maglev import is_prime
from crossway.core.errors import InvalidArgument

from .helpers import endpoints, key_owners, moved_fraction, pick_counts

KEYS = [f"session-{i}" for i in range(30_000)]


def maglev(eps: list[Endpoint], table_size: int = 65_537) -> Maglev:
    lb = Maglev(table_size=table_size, rng=random.Random(1))
    lb.update(eps)
    return lb


def test_default_table_is_65537_and_sizes_must_be_prime() -> None:
    assert Maglev().table_size == 65_537
    assert is_prime(65_537)
    with pytest.raises(InvalidArgument, match="prime"):
        Maglev(table_size=65_536)
    assert Maglev().pick("k") is None


def test_table_is_balanced_to_one_slot() -> None:
    counts = maglev(endpoints(10)).slot_counts()
    assert sum(counts.values()) == 65_537
    assert max(counts.values()) - min(counts.values()) <= 1


@settings(max_examples=20, deadline=None)
@given(weights=st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=8))
def test_weighted_table_follows_weights(weights: list[int]) -> None:
    size = 4099
    counts = maglev(endpoints(len(weights), weights=weights), table_size=size).slot_counts()
    assert sum(counts.values()) == size
    total = sum(weights)
    for i, w in enumerate(weights):
        assert counts[f"ep{i}"] == pytest.approx(size * w / total, abs=len(weights) + 1)


def test_removal_moves_about_one_nth_of_keys() -> None:
    eps = endpoints(10)
    lb = maglev(eps)
    before = key_owners(lb, KEYS)
    lb.update(eps[:6] + eps[7:])
    after = key_owners(lb, KEYS)
    owned = sum(1 for k in KEYS if before[k] == "ep6") / len(KEYS)
    moved = moved_fraction(before, after)
    # Every key of the departed endpoint moves, plus a few others (Maglev
    # trades a little disruption for perfect balance).
    assert all(after[k] != "ep6" for k in KEYS)
    assert owned <= moved <= owned + 0.03
    assert moved == pytest.approx(1 / 10, abs=0.03)


@settings(max_examples=6, deadline=None)
@given(n=st.integers(min_value=3, max_value=30), gone=st.integers(min_value=0, max_value=29))
def test_disruption_stays_near_one_nth_for_any_size(n: int, gone: int) -> None:
    eps = endpoints(n)
    lb = maglev(eps, table_size=10_007)
    keys = KEYS[:5000]
    before = key_owners(lb, keys)
    lb.update([e for i, e in enumerate(eps) if i != gone % n])
    assert moved_fraction(before, key_owners(lb, keys)) <= 1 / n + 0.05


def test_table_is_independent_of_arrival_order_and_restores() -> None:
    eps = endpoints(7)
    a = maglev(eps, table_size=4099)
    b = maglev(list(reversed(eps)), table_size=4099)
    assert key_owners(a, KEYS[:3000]) == key_owners(b, KEYS[:3000])
    before = key_owners(a, KEYS[:3000])
    a.set_ejected({"ep2"})
    assert "ep2" not in set(key_owners(a, KEYS[:3000]).values())
    a.set_ejected(set())
    assert key_owners(a, KEYS[:3000]) == before


def test_keys_spread_evenly_and_unkeyed_picks_spread() -> None:
    lb = maglev(endpoints(5), table_size=4099)
    owners = key_owners(lb, KEYS)
    for i in range(5):
        assert sum(1 for v in owners.values() if v == f"ep{i}") / len(KEYS) == pytest.approx(
            0.2, abs=0.02
        )
    assert len(pick_counts(lb, 300)) == 5
    assert lb.begin(endpoints(1)[0]) is NO_CALL
