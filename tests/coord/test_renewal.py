"""The renewal schedule, driven on a virtual clock.

The property: whatever the network does to renewals (fail, succeed late), the
owner gives up no later than the control plane can have let the session
expire, and never while renewals keep succeeding in time.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.coord.renewal import RenewalSchedule
from crossway.core.clock import VirtualClock


def test_renews_every_third_and_retries_sooner_after_a_failure() -> None:
    schedule = RenewalSchedule(ttl=9.0, last_renewed=0.0)
    assert schedule.delay(0.0) == 3.0
    assert schedule.delay(2.0) == 1.0
    schedule.failed()
    assert schedule.delay(3.0) == pytest.approx(0.9), "ttl/10 after a failure"
    assert schedule.request_timeout(8.5) == 0.5, "never past the deadline"
    assert not schedule.lost(8.99)
    assert schedule.lost(9.0)
    schedule.renewed(4.0)
    assert schedule.failures == 0
    assert schedule.deadline == 13.0
    schedule.renewed(2.0)
    assert schedule.deadline == 13.0, "an older send never moves the deadline back"


outcomes = st.lists(
    st.tuples(st.booleans(), st.floats(min_value=0.0, max_value=5.0)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300)
@given(ttl=st.floats(min_value=1.0, max_value=30.0), script=outcomes)
def test_the_owner_gives_up_before_the_session_can_expire(
    ttl: float, script: list[tuple[bool, float]]
) -> None:
    clock = VirtualClock()
    schedule = RenewalSchedule(ttl=ttl, last_renewed=clock.now())
    server_expiry = clock.now() + ttl  # the control plane's view
    for ok, latency in script:
        clock.advance(schedule.delay(clock.now()))
        if schedule.lost(clock.now()):
            break
        assert clock.now() < server_expiry, "the owner still believed in an expired session"
        sent = clock.now()
        took = min(latency, schedule.request_timeout(sent))
        clock.advance(took)
        arrived = sent + took / 2  # the renewal reaches the server halfway
        if ok and took == latency and arrived < server_expiry:
            server_expiry = arrived + ttl
            schedule.renewed(sent)
        else:
            schedule.failed()
    # Whenever the owner gives up, the server may have let go already, never earlier:
    assert schedule.deadline <= server_expiry


@given(ttl=st.floats(min_value=1.0, max_value=30.0), rounds=st.integers(1, 200))
def test_timely_renewals_are_never_lost(ttl: float, rounds: int) -> None:
    clock = VirtualClock()
    schedule = RenewalSchedule(ttl=ttl, last_renewed=clock.now())
    for _ in range(rounds):
        clock.advance(schedule.delay(clock.now()))
        assert not schedule.lost(clock.now())
        sent = clock.now()
        clock.advance(schedule.request_timeout(sent) / 2)
        schedule.renewed(sent)
