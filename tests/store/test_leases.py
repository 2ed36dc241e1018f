"""The pure lease table, on a virtual clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crossway.store.leases import LeaseTable


def test_renewal_postpones_expiry() -> None:
    table = LeaseTable()
    table.grant(1, 10, now=0)
    table.grant(2, 10, now=0)
    table.renew(1, now=8)
    assert table.expired(10) == [2]
    assert table.expired(17) == []
    assert table.expired(18) == [1]


def test_keys_move_between_leases() -> None:
    table = LeaseTable()
    table.grant(1, 10, now=0)
    table.grant(2, 10, now=0)
    table.attach("/a", 1)
    table.attach("/a", 2)
    state1, state2 = table.get(1), table.get(2)
    assert state1 is not None
    assert state2 is not None
    assert state1.keys == set()
    assert state2.keys == {"/a"}
    table.remove(2)
    table.attach("/a", 1)
    assert state1.keys == {"/a"}


@given(
    st.lists(
        st.tuples(st.sampled_from(["renew", "tick"]), st.integers(0, 9), st.floats(0, 5)),
        max_size=200,
    )
)
def test_every_lease_expires_exactly_once_at_its_deadline(
    steps: list[tuple[str, int, float]],
) -> None:
    table = LeaseTable()
    now = 0.0
    deadlines = {}
    for lease in range(10):
        table.grant(lease, 3.0, now)
        deadlines[lease] = 3.0
    expired: set[int] = set()
    for action, lease, dt in steps:
        if action == "renew":
            if lease not in expired:
                table.renew(lease, now)
                deadlines[lease] = now + 3.0
        else:
            now += dt
            for gone in table.expired(now):
                assert gone not in expired
                assert deadlines[gone] <= now
                expired.add(gone)
                table.remove(gone)
    for lease, deadline in deadlines.items():
        if lease not in expired:
            assert deadline > now


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["grant", "renew", "remove", "postpone", "tick"]),
            st.integers(min_value=1, max_value=12),
            st.floats(min_value=0.1, max_value=20.0),
        ),
        max_size=120,
    ),
    within=st.floats(min_value=0.1, max_value=15.0),
    fraction=st.floats(min_value=0.05, max_value=1.0),
)
def test_expiring_finds_exactly_the_leases_a_plain_scan_finds(
    steps: list[tuple[str, int, float]], within: float, fraction: float
) -> None:
    # `expiring` prefilters the deadline array by the longest TTL ever seen;
    # whatever grants, renewals, postponements, removals and slot reuse came
    # before, it must answer what checking every lease one by one answers.
    table = LeaseTable()
    model: dict[int, tuple[float, float]] = {}  # lease -> (ttl, deadline)
    now = 0.0
    for action, lease, amount in steps:
        if action == "grant":
            table.grant(lease, amount, now)
            model[lease] = (amount, now + amount)
        elif action == "renew" and lease in model:
            table.renew(lease, now)
            ttl = model[lease][0]
            model[lease] = (ttl, now + ttl)
        elif action == "postpone" and lease in model:
            table.postpone(lease, now + amount)
            model[lease] = (model[lease][0], now + amount)
        elif action == "remove":
            table.remove(lease)
            model.pop(lease, None)
        elif action == "tick":
            now += amount
        among = {lease for lease in model if lease % 3}  # callers ask about a subset
        found = {s.id for s in table.expiring(now, within=within, fraction=fraction, among=among)}
        expected = {
            lease
            for lease, (ttl, deadline) in model.items()
            if lease in among and deadline - now < within and deadline - now < ttl * fraction
        }
        assert found == expected
