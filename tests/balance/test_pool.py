"""Membership, ejection and panic, through the simplest balancer."""

from __future__ import annotations

import random

import pytest

from crossway.balance import Endpoint, RoundRobin
from crossway.core.errors import InvalidArgument

from .helpers import endpoints, pick_counts


def test_empty_set_picks_none() -> None:
    lb = RoundRobin()
    assert lb.pick() is None
    lb.update([])
    assert lb.pick() is None


def test_duplicate_ids_are_rejected_and_leave_the_balancer_unchanged() -> None:
    lb = RoundRobin()
    eps = endpoints(3)
    lb.update(eps)
    with pytest.raises(InvalidArgument, match="duplicate"):
        lb.update([*eps, Endpoint("ep0", "10.9.9.9", 1)])
    assert lb.endpoints == tuple(eps)


def test_ejected_and_unhealthy_endpoints_are_excluded() -> None:
    lb = RoundRobin(rng=random.Random(1))
    eps = endpoints(10)
    eps[1] = Endpoint("ep1", "10.0.0.1", 8001, healthy=False)
    lb.update(eps)
    lb.set_ejected({"ep2", "ep3"})
    counts = pick_counts(lb, 700)
    assert set(counts) == {f"ep{i}" for i in range(10)} - {"ep1", "ep2", "ep3"}
    assert not lb.panicking
    lb.set_ejected(set())
    assert "ep2" in pick_counts(lb, 90)


def test_panic_when_fewer_than_half_are_available() -> None:
    lb = RoundRobin(rng=random.Random(1))
    lb.update(endpoints(10))
    lb.set_ejected({f"ep{i}" for i in range(5)})  # exactly 50% available: no panic
    assert not lb.panicking
    assert len(pick_counts(lb, 100)) == 5
    lb.set_ejected({f"ep{i}" for i in range(6)})  # 40% available: panic, use all
    assert lb.panicking
    assert len(pick_counts(lb, 100)) == 10


def test_panic_threshold_is_configurable_and_zero_disables_it() -> None:
    strict = RoundRobin(healthy_panic_threshold=0)
    strict.update(endpoints(4))
    strict.set_ejected({"ep0", "ep1", "ep2"})
    assert {strict.pick().id for _ in range(8)} == {"ep3"}  # type: ignore[union-attr]
    strict.set_ejected({"ep0", "ep1", "ep2", "ep3"})
    assert strict.pick() is None
    eager = RoundRobin(healthy_panic_threshold=80)
    eager.update(endpoints(10))
    eager.set_ejected({"ep0", "ep1", "ep2"})
    assert eager.panicking
    with pytest.raises(InvalidArgument):
        RoundRobin(healthy_panic_threshold=101)


def test_all_unavailable_panics_to_all_members() -> None:
    lb = RoundRobin()
    lb.update([Endpoint(f"u{i}", "10.0.0.1", 80 + i, healthy=False) for i in range(3)])
    assert lb.panicking
    assert len(pick_counts(lb, 30)) == 3


def test_unchanged_updates_do_not_rebuild() -> None:
    class Counting(RoundRobin):
        __slots__ = ("rebuilds",)

        def _rebuild(self, active: tuple[Endpoint, ...]) -> None:
            self.rebuilds = getattr(self, "rebuilds", 0) + 1
            super()._rebuild(active)

    lb = Counting()
    eps = endpoints(5)
    lb.update(eps)
    lb.update(list(eps))
    ejected = frozenset({"not-a-member"})
    lb.set_ejected(ejected)
    lb.set_ejected(ejected)
    assert lb.rebuilds == 1
    lb.set_ejected({"ep0"})
    assert lb.rebuilds == 2
