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
