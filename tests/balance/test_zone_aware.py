from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.balance import NO_CALL, Balancer, Endpoint, LeastRequest, RingHash, RoundRobin
from crossway.balance.zone_aware import ZoneAware, route_fractions

from .helpers import endpoints, pick_counts

N = 20_000


def cluster(sizes: dict[str, int]) -> list[Endpoint]:
    return [e for zone, n in sizes.items() for e in endpoints(n, zone=zone)]


def zone_shares(lb: ZoneAware, picks: int = N) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for _ in range(picks):
        chosen = lb.pick()
        assert chosen is not None
        counts[chosen.zone] += 1
    return {z: c / picks for z, c in counts.items()}


def zone_aware(sizes: dict[str, int], **kwargs: object) -> ZoneAware:
    lb = ZoneAware(
        local_zone="a",
        inner=lambda: RoundRobin(rng=random.Random(3)),
        rng=random.Random(5),
        **kwargs,  # type: ignore[arg-type]
    )
    lb.update(cluster(sizes))
    return lb


def test_traffic_stays_local_while_the_local_zone_is_healthy() -> None:
    lb = zone_aware({"a": 10, "b": 10, "c": 10})
    assert lb.local_fraction == 1.0
    assert zone_shares(lb, 2000) == {"a": 1.0}


def test_degraded_local_zone_spills_the_excess_proportionally() -> None:
    lb = zone_aware({"a": 10, "b": 10, "c": 10})
    lb.set_ejected({f"a-ep{i}" for i in range(5)})
    # a has 5/25 of what is available but 1/3 of the callers: keep 0.2 / (1/3).
    assert lb.local_fraction == pytest.approx(0.6)
    shares = zone_shares(lb)
    assert shares["a"] == pytest.approx(0.6, abs=0.02)
    assert shares["b"] == pytest.approx(0.2, abs=0.02)
    assert shares["c"] == pytest.approx(0.2, abs=0.02)
    local = {e.id for e in (lb.pick() for _ in range(500)) if e is not None and e.zone == "a"}
    assert local == {f"a-ep{i}" for i in range(5, 10)}


def test_spill_follows_residual_capacity_of_the_other_zones() -> None:
    lb = zone_aware({"a": 10, "b": 10, "c": 20})
    lb.set_ejected({f"a-ep{i}" for i in range(5)})
    shares = zone_shares(lb)
    # available 5/10/20 of 35 against callers 10/10/20 of 40
    keep = (5 / 35) / (10 / 40)
    residual_b, residual_c = 10 / 35 - 10 / 40, 20 / 35 - 20 / 40
    assert shares["a"] == pytest.approx(keep, abs=0.02)
    spill = 1 - keep
    assert shares["b"] == pytest.approx(spill * residual_b / (residual_b + residual_c), abs=0.02)
    assert shares["c"] == pytest.approx(spill * residual_c / (residual_b + residual_c), abs=0.02)


def test_local_zone_down_sends_everything_elsewhere() -> None:
    lb = zone_aware({"a": 10, "b": 10, "c": 10})
    lb.set_ejected({f"a-ep{i}" for i in range(10)})
    shares = zone_shares(lb, 4000)
    assert "a" not in shares
    assert shares["b"] == pytest.approx(0.5, abs=0.04)


def test_caller_distribution_can_be_given() -> None:
    lb = zone_aware({"a": 10, "b": 10, "c": 10}, caller_zones={"a": 2, "b": 1, "c": 1})
    assert lb.local_fraction == pytest.approx((1 / 3) / 0.5)
    assert zone_shares(lb)["b"] == pytest.approx((1 - 2 / 3) / 2, abs=0.02)


def test_small_clusters_ignore_zones() -> None:
    lb = zone_aware({"a": 2, "b": 2})
    assert lb.local_fraction == 0.0
    assert zone_shares(lb, 4000)["b"] == pytest.approx(0.5, abs=0.04)


def test_global_panic_spreads_over_every_zone_by_capacity() -> None:
    lb = zone_aware({"a": 10, "b": 10, "c": 10})
    lb.set_ejected({f"a-ep{i}" for i in range(10)} | {f"b-ep{i}" for i in range(6)})
    assert lb.panicking
    shares = zone_shares(lb, 6000)
    assert shares == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, abs=0.03)


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=12), min_size=2, max_size=5),
    down=st.lists(st.integers(min_value=0, max_value=12), min_size=5, max_size=5),
)
def test_every_zone_gets_exactly_its_share_of_available_capacity(
    sizes: list[int], down: list[int]
) -> None:
    # When callers in every zone route this way, each zone's inflow equals its
    # share of available capacity: per-endpoint load is equal everywhere.
    zones = [f"z{i}" for i in range(len(sizes))]
    total = {z: float(n) for z, n in zip(zones, sizes, strict=True)}
    available = {z: float(max(n - d, 0)) for z, n, d in zip(zones, sizes, down, strict=False)}
    if sum(available.values()) == 0:
        return
    callers = {z: n / sum(total.values()) for z, n in total.items()}
    inflow = dict.fromkeys(zones, 0.0)
    for caller in zones:
        keep, spill = route_fractions(caller, available, callers)
        inflow[caller] += callers[caller] * keep
        for z, w in spill.items():
            inflow[z] += callers[caller] * (1 - keep) * w / sum(spill.values())
    expected = {z: a / sum(available.values()) for z, a in available.items()}
    assert inflow == pytest.approx(expected)


def test_begin_reaches_the_inner_balancer_of_the_endpoints_zone() -> None:
    made: list[LeastRequest] = []

    def factory() -> Balancer:
        made.append(LeastRequest())
        return made[-1]

    lb = ZoneAware(local_zone="a", inner=factory)
    eps = cluster({"a": 3, "b": 3})
    lb.update(eps)
    call = lb.begin(eps[4])
    assert sum(inner.pending("b-ep1") for inner in made) == 1
    call.end()
    assert sum(inner.pending("b-ep1") for inner in made) == 0
    assert lb.begin(Endpoint("x", "10.1.1.1", 1, zone="nowhere")) is NO_CALL


def test_zones_come_and_go_and_new_ones_see_current_ejections() -> None:
    lb = zone_aware({"a": 3, "b": 3})
    lb.set_ejected({"c-ep0"})
    lb.update(cluster({"a": 3, "b": 3, "c": 3}))
    assert "c-ep0" not in pick_counts(lb, 3000)
    lb.update(cluster({"b": 4}))
    assert set(pick_counts(lb, 100)) == {f"b-ep{i}" for i in range(4)}
    lb.update([])
    assert lb.pick() is None


def test_keyed_picks_are_consistent_through_zone_choice() -> None:
    lb = ZoneAware(local_zone="a", inner=RingHash)
    lb.update(cluster({"a": 10, "b": 10, "c": 10}))
    lb.set_ejected({f"a-ep{i}" for i in range(5)})
    keys = [f"k{i}" for i in range(3000)]
    first = [lb.pick(k) for k in keys]
    assert [lb.pick(k) for k in keys] == first
    local = sum(1 for e in first if e is not None and e.zone == "a") / len(keys)
    assert local == pytest.approx(0.6, abs=0.04)
    served = {e.id for e in first if e is not None and e.zone == "b"}
    assert len(served) == 10  # spilled keys spread over the whole remote ring


def test_nothing_available_and_panic_disabled_picks_none() -> None:
    lb = zone_aware({"a": 4, "b": 4}, healthy_panic_threshold=0)
    lb.set_ejected({e.id for e in lb.endpoints})
    assert not lb.panicking
    assert lb.pick() is None
