from __future__ import annotations

import random
from math import sqrt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.balance import Outcome, OutlierConfig, OutlierDetector, RoundRobin
from crossway.core import VirtualClock
from crossway.core.errors import InvalidArgument

from .helpers import endpoints, pick_counts

IDS = [f"ep{i}" for i in range(10)]


def detector(**settings_: object) -> tuple[OutlierDetector, VirtualClock]:
    clock = VirtualClock()
    config = OutlierConfig(**settings_)  # type: ignore[arg-type]
    det = OutlierDetector(config, clock=clock, rng=random.Random(1))
    det.update(IDS)
    return det, clock


def fail(det: OutlierDetector, endpoint_id: str, times: int, status: int = 500) -> None:
    for _ in range(times):
        det.record_status(endpoint_id, status)


def test_defaults_are_envoys() -> None:
    c = OutlierConfig()
    assert (c.consecutive_5xx, c.consecutive_gateway_failure) == (5, 5)
    assert (c.interval, c.base_ejection_time, c.max_ejection_time) == (10.0, 30.0, 300.0)
    assert (c.max_ejection_percent, c.success_rate_stdev_factor) == (10.0, 1900)
    assert (c.success_rate_minimum_hosts, c.success_rate_request_volume) == (5, 100)
    assert (c.enforcing_consecutive_5xx, c.enforcing_consecutive_gateway_failure) == (100.0, 0.0)


def test_status_classification() -> None:
    assert Outcome.from_status(200) is Outcome.SUCCESS
    assert Outcome.from_status(404) is Outcome.SUCCESS
    assert Outcome.from_status(500) is Outcome.ERROR
    assert Outcome.from_status(503) is Outcome.GATEWAY_ERROR


def test_ejects_after_exactly_n_consecutive_5xx() -> None:
    det, _ = detector()
    fail(det, "ep3", 4)
    assert det.ejected() == frozenset()
    fail(det, "ep3", 1)
    assert det.ejected() == {"ep3"}


def test_a_success_resets_the_streak() -> None:
    det, _ = detector()
    fail(det, "ep3", 4)
    det.record("ep3", Outcome.SUCCESS)
    fail(det, "ep3", 4)
    assert det.ejected() == frozenset()


def test_gateway_failures_count_toward_5xx_and_have_their_own_opt_in_detector() -> None:
    det, _ = detector(consecutive_5xx=50)
    fail(det, "ep1", 10, status=503)
    assert det.ejected() == frozenset()  # enforcing_consecutive_gateway_failure is 0
    det, _ = detector(consecutive_5xx=50, enforcing_consecutive_gateway_failure=100)
    fail(det, "ep1", 4, status=502)
    fail(det, "ep1", 1, status=500)  # a non-gateway 5xx breaks the gateway streak
    fail(det, "ep1", 4, status=504)
    assert det.ejected() == frozenset()
    det.record("ep1", Outcome.GATEWAY_ERROR)
    assert det.ejected() == {"ep1"}


def test_ejection_time_grows_with_each_ejection_and_is_capped() -> None:
    det, clock = detector(base_ejection_time=30, max_ejection_time=90, interval=1000)
    expected = [30.0, 60.0, 90.0, 90.0]
    for k, duration in enumerate(expected, start=1):
        start = clock.now()
        fail(det, "ep0", 5)
        assert det.ejected_until("ep0") == pytest.approx(start + duration)
        assert det.ejection_count("ep0") == min(k, 3)
        clock.advance(duration - 0.001)
        assert "ep0" in det.ejected()
        clock.advance(0.001)
        assert det.ejected() == frozenset()


def test_a_recovered_endpoint_is_forgiven_one_step_per_healthy_interval() -> None:
    det, clock = detector()  # interval 10 s, base 30 s
    fail(det, "ep0", 5)
    clock.advance(30)  # back in service at t=30
    fail(det, "ep0", 5)
    assert det.ejected_until("ep0") == pytest.approx(30 + 60)
    clock.set(99)  # back in service at t=90; sweeps run at t=100, 110 ...
    assert det.ejected() == frozenset()
    assert det.ejection_count("ep0") == 2
    clock.set(105)  # the sweep at 100 found it back for a whole interval
    det.ejected()
    assert det.ejection_count("ep0") == 1
    clock.set(115)
    det.ejected()
    assert det.ejection_count("ep0") == 0
    fail(det, "ep0", 5)  # forgiven: the next ejection is short again
    assert det.ejected_until("ep0") == pytest.approx(115 + 30)


def test_results_during_ejection_are_ignored_and_counters_restart() -> None:
    det, clock = detector()
    fail(det, "ep0", 5)
    fail(det, "ep0", 20)  # calls that were in flight
    clock.advance(30)
    assert det.ejected() == frozenset()
    fail(det, "ep0", 4)
    assert det.ejected() == frozenset()


def test_never_ejects_more_than_max_ejection_percent() -> None:
    det, _ = detector()  # 10 endpoints, 10%: one
    for endpoint_id in IDS:
        fail(det, endpoint_id, 5)
    assert len(det.ejected()) == 1
    det, _ = detector(max_ejection_percent=30)
    for endpoint_id in IDS:
        fail(det, endpoint_id, 5)
    assert len(det.ejected()) == 3


def test_small_clusters_eject_none_unless_always_eject_one_host() -> None:
    clock = VirtualClock()
    strict = OutlierDetector(clock=clock)
    strict.update(["a", "b", "c"])  # 10% of 3 rounds to nobody
    fail(strict, "a", 5)
    assert strict.ejected() == frozenset()
    lenient = OutlierDetector(OutlierConfig(always_eject_one_host=True), clock=clock)
    lenient.update(["a", "b", "c"])
    fail(lenient, "a", 5)
    fail(lenient, "b", 5)
    assert lenient.ejected() == {"a"}


@given(n=st.integers(min_value=1, max_value=40), percent=st.integers(min_value=0, max_value=100))
def test_ejected_share_never_exceeds_the_cap(n: int, percent: int) -> None:
    det = OutlierDetector(
        OutlierConfig(max_ejection_percent=percent, consecutive_5xx=1), clock=VirtualClock()
    )
    det.update(str(i) for i in range(n))
    for i in range(n):
        det.record(str(i), Outcome.ERROR)
    assert len(det.ejected()) * 100 <= percent * n


def test_enforcing_percentage_is_a_probability() -> None:
    ejected = 0
    for seed in range(200):
        det = OutlierDetector(
            OutlierConfig(enforcing_consecutive_5xx=25),
            clock=VirtualClock(),
            rng=random.Random(seed),
        )
        det.update(IDS)
        fail(det, "ep0", 5)
        ejected += len(det.ejected())
    assert 30 <= ejected <= 70


def record_rate(det: OutlierDetector, endpoint_id: str, ok: int, total: int) -> None:
    # Successes spread evenly among failures so no 5xx streak forms.
    for i in range(total):
        good = (i * ok) // total != ((i + 1) * ok) // total
        det.record(endpoint_id, Outcome.SUCCESS if good else Outcome.ERROR)


def test_success_rate_ejects_below_mean_minus_1_9_sd_at_the_interval() -> None:
    det, clock = detector(consecutive_5xx=1000)
    for endpoint_id in IDS[:9]:
        record_rate(det, endpoint_id, 100, 100)
    record_rate(det, "ep9", 50, 100)
    assert det.ejected() == frozenset()  # nothing until the sweep
    clock.advance(10)
    # mean 0.95, sd 0.15: threshold 0.665
    assert det.ejected() == {"ep9"}


def test_success_rate_needs_volume_and_enough_hosts() -> None:
    det, clock = detector(consecutive_5xx=1000)
    for endpoint_id in IDS[:9]:
        record_rate(det, endpoint_id, 100, 100)
    record_rate(det, "ep9", 0, 99)  # below request volume: not judged
    clock.advance(10)
    assert det.ejected() == frozenset()
    det, clock = detector(consecutive_5xx=1000, success_rate_minimum_hosts=11)
    for endpoint_id in IDS[:9]:
        record_rate(det, endpoint_id, 100, 100)
    record_rate(det, "ep9", 0, 100)
    clock.advance(10)
    assert det.ejected() == frozenset()


@settings(max_examples=60, deadline=None)
@given(oks=st.lists(st.integers(min_value=0, max_value=100), min_size=5, max_size=10))
def test_success_rate_uses_exactly_mean_minus_factor_sd(oks: list[int]) -> None:
    det, clock = detector(consecutive_5xx=1000, max_ejection_percent=100)
    ids = [f"ep{i}" for i in range(len(oks))]
    for endpoint_id, ok in zip(ids, oks, strict=True):
        record_rate(det, endpoint_id, ok, 100)
    clock.advance(10)
    rates = [ok / 100 for ok in oks]
    mean = sum(rates) / len(rates)
    sd = sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
    expected = {i for i, r in zip(ids, rates, strict=True) if r < mean - 1.9 * sd}
    assert det.ejected() == expected


def test_success_rate_ejects_worst_first_under_the_cap() -> None:
    det, clock = detector(consecutive_5xx=1000, success_rate_stdev_factor=0)
    for endpoint_id, ok in zip(IDS, [100] * 7 + [80, 60, 70], strict=True):
        record_rate(det, endpoint_id, ok, 100)
    clock.advance(10)
    assert det.ejected() == {"ep8"}


def test_ejected_returns_the_same_object_until_something_changes() -> None:
    det, clock = detector()
    first = det.ejected()
    assert det.ejected() is first
    fail(det, "ep0", 5)
    second = det.ejected()
    assert second == {"ep0"}
    clock.advance(5)
    assert det.ejected() is second


def test_long_idle_catches_up_in_bounded_time() -> None:
    det, clock = detector()
    fail(det, "ep0", 5)
    clock.advance(10 * 365 * 24 * 3600.0)
    assert det.ejected() == frozenset()
    assert det.ejection_count("ep0") == 0
    fail(det, "ep0", 5)
    assert det.ejected_until("ep0") == pytest.approx(clock.now() + 30)


def test_membership_updates_keep_state_and_drop_the_departed() -> None:
    det, _ = detector()
    fail(det, "ep0", 5)
    det.update([*endpoints(10), "extra"])
    assert det.ejected() == {"ep0"}
    det.update(IDS[1:])
    assert det.ejected() == frozenset()
    det.record("unknown", Outcome.ERROR)  # ignored


def test_from_mapping_parses_durations_and_rejects_unknown_keys() -> None:
    config = OutlierConfig.from_mapping(
        {"interval": "5s", "base_ejection_time": "1m", "consecutive_5xx": 3}
    )
    assert (config.interval, config.base_ejection_time, config.consecutive_5xx) == (5.0, 60.0, 3)
    with pytest.raises(InvalidArgument, match="unknown"):
        OutlierConfig.from_mapping({"consecutive_500": 3})
    with pytest.raises(InvalidArgument, match="interval"):
        OutlierConfig.from_mapping({"interval": "soon"})
    with pytest.raises(InvalidArgument):
        OutlierConfig(max_ejection_percent=120)
    with pytest.raises(InvalidArgument):
        OutlierConfig(consecutive_5xx=0)


def test_balancer_excludes_ejected_and_panics_when_too_many_are_out() -> None:
    det, clock = detector(max_ejection_percent=100)
    lb = RoundRobin(rng=random.Random(1))
    lb.update(endpoints(10))
    fail(det, "ep0", 5)
    lb.set_ejected(det.ejected())
    assert "ep0" not in pick_counts(lb, 90)
    for endpoint_id in IDS[1:6]:
        fail(det, endpoint_id, 5)
    lb.set_ejected(det.ejected())  # 4 of 10 available: below 50%, panic
    assert lb.panicking
    assert len(pick_counts(lb, 100)) == 10
    clock.advance(30)
    lb.set_ejected(det.ejected())
    assert not lb.panicking
    assert len(pick_counts(lb, 100)) == 10
