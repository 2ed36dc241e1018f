"""Self-preservation on virtual time."""

from __future__ import annotations

from crossway.registry.preservation import LeaseView, PreservationSettings, SelfPreservation


def fleet(n: int, lapsing: int, ttl: float = 10.0) -> list[LeaseView]:
    return [LeaseView(i, ttl, 1.0 if i < lapsing else ttl * 0.9) for i in range(n)]


def test_a_single_dead_instance_is_removed_normally() -> None:
    guard = SelfPreservation()
    decision = guard.evaluate(fleet(100, 1), now=0)
    assert not decision.engaged
    assert decision.renew == []


def test_a_small_fleet_never_engages() -> None:
    guard = SelfPreservation()
    assert not guard.evaluate(fleet(8, 8), now=0).engaged, "fewer than 10 leases involved"


def test_mass_lapse_engages_and_holds_the_leases() -> None:
    guard = SelfPreservation()
    decision = guard.evaluate(fleet(20, 15), now=0)
    assert decision.engaged
    assert sorted(decision.renew) == list(range(15)), "leases about to expire are renewed"
    assert decision.stale == set(range(15))


def test_recovered_leases_are_released_and_protection_disengages() -> None:
    guard = SelfPreservation(PreservationSettings(share=0.5, min_leases=10))
    guard.evaluate(fleet(20, 15), now=0)  # we renewed 0..14 at t=0: deadline 10
    # At t=2 the holders of 0..11 renewed (deadline 12), 12..14 still silent.
    views = [LeaseView(i, 10, 10.0 if i < 12 else 8.0) for i in range(15)]
    views += [LeaseView(i, 10, 9.0) for i in range(15, 20)]
    decision = guard.evaluate(views, now=2)
    assert not decision.engaged, "renewals recovered"
    assert decision.stale == set()
    assert guard.held == {}


def test_an_operator_can_lift_protection_until_the_condition_clears() -> None:
    guard = SelfPreservation()
    assert guard.evaluate(fleet(20, 15), now=0).engaged
    guard.lift()
    assert not guard.evaluate(fleet(20, 15), now=1).engaged
    assert not guard.evaluate(fleet(20, 2), now=2).engaged  # clears: re-armed
    assert guard.evaluate(fleet(20, 15), now=3).engaged
