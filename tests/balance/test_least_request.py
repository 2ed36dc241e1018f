from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.balance import NO_CALL, Endpoint, LeastRequest, PeakEwma
from crossway.core import VirtualClock
from crossway.core.errors import InvalidArgument

from .helpers import endpoints, pick_counts, simulate


def test_single_and_empty() -> None:
    lb = LeastRequest()
    assert lb.pick() is None
    lb.update(endpoints(1))
    assert lb.pick() == endpoints(1)[0]


def test_least_request_prefers_the_endpoint_with_fewer_in_flight() -> None:
    lb = LeastRequest(rng=random.Random(2))
    a, b = endpoints(2)
    lb.update([a, b])
    busy = [lb.begin(a) for _ in range(3)]
    assert {lb.pick().id for _ in range(50)} == {"ep1"}  # type: ignore[union-attr]
    for call in busy:
        call.end()
    assert len(pick_counts(lb, 200)) == 2


@given(n=st.integers(min_value=2, max_value=30), seed=st.integers(0, 2**32 - 1))
def test_p2c_never_picks_the_most_loaded_of_many(n: int, seed: int) -> None:
    # With two distinct candidates, the single most loaded endpoint can only
    # win against itself, which distinct sampling rules out.
    lb = LeastRequest(rng=random.Random(seed))
    eps = endpoints(n)
    lb.update(eps)
    in_flight = [lb.begin(eps[0]) for _ in range(5)]
    assert all(lb.pick() != eps[0] for _ in range(20))
    assert len(in_flight) == 5


def test_weights_steer_sampling_at_zero_load() -> None:
    lb = LeastRequest(rng=random.Random(5))
    lb.update(endpoints(3, weights=[1, 2, 7]))
    counts = pick_counts(lb, 30_000)
    # Two distinct weighted draws, then a tie on load: the first draw wins.
    assert counts["ep2"] / 30_000 == pytest.approx(0.7, abs=0.02)
    assert counts["ep1"] / 30_000 == pytest.approx(0.2, abs=0.02)


def test_load_is_compared_per_unit_of_weight() -> None:
    lb = LeastRequest(rng=random.Random(1))
    big, small = endpoints(2, weights=[4, 1])
    lb.update([big, small])
    in_flight = [lb.begin(big) for _ in range(3)]  # 3/4 per unit of weight, against 0
    assert {lb.pick().id for _ in range(20)} == {"ep1"}  # type: ignore[union-attr]
    in_flight.append(lb.begin(small))  # now 3/4 against 1: big wins
    assert {lb.pick().id for _ in range(20)} == {"ep0"}  # type: ignore[union-attr]


def test_pending_counts_survive_updates_for_endpoints_that_stay() -> None:
    lb = LeastRequest()
    eps = endpoints(3)
    lb.update(eps)
    in_flight = [lb.begin(eps[0]), lb.begin(eps[0])]
    old = lb.begin(eps[2])
    lb.update([*eps[:2], Endpoint("new", "10.0.0.9", 9)])
    assert lb.pending("ep0") == 2
    assert lb.pending("ep2") == 0
    del in_flight
    assert lb.pending("ep0") == 0  # dropped calls end themselves
    old.end()  # the call to the departed endpoint ends harmlessly
    assert lb.begin(eps[2]) is NO_CALL
    lb.update(eps)
    assert lb.pending("ep2") == 0


def test_peak_ewma_estimate_jumps_up_and_decays_with_tau() -> None:
    clock = VirtualClock()
    lb = PeakEwma(clock=clock, decay=10.0, default_rtt=0.030)
    (ep,) = endpoints(1)
    lb.update([ep])
    assert lb.rtt_estimate("ep0") == pytest.approx(0.030)
    call = lb.begin(ep)
    clock.advance(0.5)
    call.end()
    assert lb.rtt_estimate("ep0") == pytest.approx(0.5)  # peak: taken at once
    clock.advance(10.0)
    assert lb.rtt_estimate("ep0") == pytest.approx(0.5 * 0.36788, rel=1e-3)  # e^-1
    assert lb.rtt_estimate("missing") is None


def test_peak_ewma_blends_lower_samples_by_elapsed_time() -> None:
    clock = VirtualClock()
    lb = PeakEwma(clock=clock, default_rtt=0.100)
    (ep,) = endpoints(1)
    lb.update([ep])
    clock.advance(5.0)
    # A 10 ms sample after 5 s: weight 1 - e^-0.5 on the sample, against the
    # estimate as stored (its decay is the other part of the same blend).
    lb.begin(ep, now=4.99).end(now=5.0)
    expected = 0.100 * 0.60653 + 0.010 * (1 - 0.60653)
    assert lb.rtt_estimate("ep0", now=5.0) == pytest.approx(expected, rel=1e-3)


def test_a_failed_call_never_makes_an_endpoint_look_faster() -> None:
    clock = VirtualClock()
    lb = PeakEwma(clock=clock, default_rtt=0.200)
    (ep,) = endpoints(1)
    lb.update([ep])

    def refused() -> None:
        with lb.begin(ep):
            clock.advance(0.001)
            raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        refused()
    assert lb.rtt_estimate("ep0") == pytest.approx(0.200, rel=1e-3)


def test_peak_ewma_cost_counts_pending() -> None:
    clock = VirtualClock()
    lb = PeakEwma(clock=clock, rng=random.Random(1))
    a, b = endpoints(2)
    lb.update([a, b])
    call = lb.begin(a)  # same RTT estimate, but a has one in flight: cost doubles
    assert {lb.pick().id for _ in range(20)} == {"ep1"}  # type: ignore[union-attr]
    call.end()


def test_peak_ewma_steers_away_from_an_endpoint_made_slow() -> None:
    clock = VirtualClock()
    lb = PeakEwma(clock=clock, rng=random.Random(11))
    lb.update(endpoints(10))

    def rtt(endpoint_id: str, n: int) -> float:
        return 0.250 if endpoint_id == "ep0" and n >= 20_000 else 0.010

    chosen = simulate(lb, clock, rtt, requests=40_000, gap=0.002)
    before = Counter(chosen[:20_000])["ep0"] / 20_000
    after = Counter(chosen[22_000:])["ep0"] / 18_000
    assert before == pytest.approx(0.10, abs=0.02)
    assert after < 0.01  # from its fair 10% to under 1%


def test_least_request_also_backs_off_a_slow_endpoint_but_less() -> None:
    clock = VirtualClock()
    lb = LeastRequest(rng=random.Random(11))
    lb.update(endpoints(10))
    chosen = simulate(
        lb,
        clock,
        lambda i, n: 0.250 if i == "ep0" and n >= 5_000 else 0.010,
        requests=15_000,
        gap=0.002,
    )
    after = Counter(chosen[6_000:])["ep0"] / 9_000
    assert 0.005 < after < 0.05


def test_peak_ewma_rejects_bad_settings() -> None:
    with pytest.raises(InvalidArgument):
        PeakEwma(decay=0)
    with pytest.raises(InvalidArgument):
        PeakEwma(default_rtt=-1)


def test_latency_estimates_survive_updates_for_endpoints_that_stay() -> None:
    clock = VirtualClock()
    lb = PeakEwma(clock=clock)
    eps = endpoints(3)
    lb.update(eps)
    call = lb.begin(eps[1])
    clock.advance(0.400)
    call.end()
    lb.update([eps[1], Endpoint("new", "10.0.0.9", 9)])
    assert lb.rtt_estimate("ep1") == pytest.approx(0.400)
    assert lb.rtt_estimate("new") == pytest.approx(0.030)


@given(
    samples=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=30.0),  # time since the previous sample
            st.floats(min_value=0.0, max_value=2.0),  # its RTT
            st.booleans(),  # ok?
        ),
        max_size=30,
    )
)
def test_peak_ewma_estimate_is_peak_sensitive_and_bounded(
    samples: list[tuple[float, float, bool]],
) -> None:
    clock = VirtualClock()
    lb = PeakEwma(clock=clock, default_rtt=0.030)
    (ep,) = endpoints(1)
    lb.update([ep])
    highest = 0.030
    for gap, rtt, ok in samples:
        clock.advance(gap)
        before = lb.rtt_estimate("ep0")
        assert before is not None
        start = max(clock.now() - rtt, 0.0)  # the call began rtt ago (not before t=0)
        lb.begin(ep, now=start).end(ok=ok)
        observed = clock.now() - start
        highest = max(highest, observed)
        after = lb.rtt_estimate("ep0")
        assert after is not None
        assert 0.0 <= after <= highest + 1e-12
        if observed > before:
            assert after == pytest.approx(observed)  # a peak is taken at once
        if not ok:
            assert after >= before - 1e-12  # a failure never lowers it
    assert lb.pending("ep0") == 0
