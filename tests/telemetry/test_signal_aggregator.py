"""Golden signals from pushes: keys, sides, bounded memory; and push validation."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.clock import VirtualClock
from crossway.core.errors import InvalidArgument
from crossway.telemetry.metrics import LATENCY_BUCKETS, OVERFLOW
from crossway.telemetry.signals.aggregator import Aggregator, Limits
from crossway.telemetry.signals.histogram import BUCKET_COUNT, Histogram
from crossway.telemetry.signals.push import Push, PushSeries, Source, validate


def cell(
    service: str = "orders",
    route: str = "/orders/{id}",
    *,
    method: str = "GET",
    caller: str | None = None,
    latencies: tuple[float, ...] = (0.01,),
    errors: int = 0,
) -> PushSeries:
    h = Histogram.of(latencies)
    return PushSeries(
        service=service,
        route=route,
        method=method,
        status_class="5xx" if errors else "2xx",
        count=h.count,
        buckets=h.counts,
        errors=errors,
        sum=h.sum,
        caller=caller,
    )


def push(*series: PushSeries, side: str = "server", source: str = "orders") -> Push:
    return Push(source=Source(source, "i-1"), series=list(series), side=side)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(3.0)


def test_one_push_feeds_service_route_and_edge(clock: VirtualClock) -> None:
    agg = Aggregator(clock)
    failed = cell(errors=1, latencies=(1.0,))
    agg.ingest(push(cell(caller="checkout", latencies=(0.01,) * 9), failed))
    clock.advance(10)
    [service] = agg.stats("service", 60)
    assert service.key.service == "orders"
    assert service.totals.requests == 10
    assert service.totals.success_rate == pytest.approx(0.9)
    assert service.totals.rps == pytest.approx(10 / 60)
    [route] = agg.stats("route", 60, service="orders")
    assert (route.key.route, route.key.method, route.totals.requests) == ("/orders/{id}", "GET", 10)
    [edge] = agg.stats("edge", 60)
    assert (edge.key.caller, edge.key.service, edge.totals.requests) == ("checkout", "orders", 9)
    row = service.to_json()
    assert row["p50_ms"] == pytest.approx(7.5, abs=2.5)
    assert row["success_rate"] == pytest.approx(0.9)


def test_service_totals_equal_the_sum_of_routes(clock: VirtualClock) -> None:
    agg = Aggregator(clock)
    agg.ingest(push(cell(route="/a"), cell(route="/b", method="POST", latencies=(0.2, 0.3))))
    clock.advance(10)
    total = agg.total(60, service="orders")
    assert total is not None
    routes = agg.stats("route", 60, service="orders")
    assert sum(r.totals.requests for r in routes) == total.totals.requests == 3
    assert agg.stats("route", 60, service="orders", method="POST")[0].key.route == "/b"
    assert agg.total(60, service="nobody") is None


def test_server_side_wins_over_client_side(clock: VirtualClock) -> None:
    agg = Aggregator(clock)
    agg.ingest(push(cell(caller="gw", latencies=(0.5,)), side="client", source="gateway"))
    clock.advance(10)
    [only_client] = agg.stats("service", 60)
    assert only_client.key.side == "client"
    agg.ingest(push(cell(caller="gw", latencies=(0.4,))))
    clock.advance(10)
    [chosen] = agg.stats("service", 60)
    assert chosen.key.side == "server"
    assert chosen.totals.requests == 1  # not 2: the sides are never added


def test_keys_past_the_limit_go_to_overflow(clock: VirtualClock) -> None:
    agg = Aggregator(clock, limits=Limits(max_keys=4))
    for i in range(10):
        agg.ingest(push(cell(service=f"s{i}", route="/")))
    assert len(agg.all_keys()) <= 4 + 6
    clock.advance(10)
    services = {s.key.service: s.totals.requests for s in agg.stats("service", 60)}
    assert sum(services.values()) == 10  # totals stay right
    assert OVERFLOW in services


def test_a_source_gets_a_bounded_number_of_routes(clock: VirtualClock) -> None:
    agg = Aggregator(clock, limits=Limits(max_cells_per_source=3))
    result = agg.ingest(push(*(cell(route=f"/r{i}") for i in range(8))))
    assert result.overflowed == 5
    clock.advance(10)
    routes = {r.key.route: r.totals.requests for r in agg.stats("route", 60)}
    assert routes == {"/r0": 1, "/r1": 1, "/r2": 1, OVERFLOW: 5}


def test_sources_are_forgotten_least_recent_first(clock: VirtualClock) -> None:
    agg = Aggregator(clock, limits=Limits(max_sources=2))
    for name in ("a", "b", "c"):
        agg.ingest(push(cell(), source=name))
    assert len(agg._sources) == 2


def test_quiet_keys_expire_after_a_day(clock: VirtualClock) -> None:
    agg = Aggregator(clock)
    agg.ingest(push(cell(service="old")))
    clock.advance(86400 + 61)
    agg.ingest(push(cell(service="new")))
    assert {k.service for k in agg.all_keys()} == {"new"}


def test_empty_series_are_skipped_and_points_include_empty_slots(clock: VirtualClock) -> None:
    agg = Aggregator(clock)
    agg.ingest(push(cell(latencies=())))
    assert agg.all_keys() == []
    agg.ingest(push(cell()))
    clock.advance(10)
    [stat] = agg.stats("service", 60, points=True)
    assert stat.points is not None
    assert len(stat.points) == 6
    assert stat.to_json()["series"][-1]["requests"] == 1


# Validation of the wire format.


def decode(body: dict[str, object]) -> Push:
    return msgspec.convert(body, Push)


def good() -> dict[str, object]:
    return {
        "source": {"service": "checkout", "instance": "c-1"},
        "interval_s": 10,
        "series": [
            {
                "service": "orders",
                "route": "/orders/{id}",
                "method": "GET",
                "status_class": "2xx",
                "count": 3,
                "errors": 0,
                "sum": 0.05,
                "buckets": [1, 2] + [0] * (BUCKET_COUNT - 2),
            }
        ],
    }


def test_a_good_push_validates() -> None:
    validate(decode(good()))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"count": 4}, "$.series[0].buckets"),
        ({"errors": 9}, "$.series[0].errors"),
        ({"status_class": "2XX"}, "$.series[0].status_class"),
        ({"buckets": [1, 2]}, "$.series[0].buckets"),
        ({"sum": -1.0}, "$.series[0].sum"),
        ({"sum": float("inf")}, "$.series[0].sum"),
        ({"service": ""}, "$.series[0].service"),
        ({"service": "a b"}, "$.series[0].service"),
        ({"caller": "x" * 500}, "$.series[0].caller"),
        ({"route": "/\n"}, "$.series[0].route"),
        ({"bounds": [0.1, 1.0]}, "$.series[0].bounds"),
        ({"buckets": [-1, 4] + [0] * (BUCKET_COUNT - 2)}, "$.series[0].buckets"),
    ],
)
def test_bad_series_name_the_field(change: dict[str, object], field: str) -> None:
    body = good()
    series = body["series"][0]  # type: ignore[index]
    series.update(change)
    with pytest.raises(InvalidArgument) as caught:
        validate(decode(body))
    assert caught.value.details["field"] == field
    assert field in caught.value.message


def test_cumulative_buckets_and_bounds_are_accepted() -> None:
    body = good()
    series = body["series"][0]  # type: ignore[index]
    series["buckets"] = [1] + [3] * (BUCKET_COUNT - 1)
    series["cumulative"] = True
    series["bounds"] = list(LATENCY_BUCKETS)
    push = decode(body)
    validate(push)
    assert push.series[0].per_bucket()[:2] == [1, 2]
    series["buckets"] = [2, 1] + [3] * (BUCKET_COUNT - 2)
    with pytest.raises(InvalidArgument, match="must not decrease"):
        validate(decode(body))


def test_bad_interval_and_too_many_series() -> None:
    body = good()
    body["interval_s"] = 0
    with pytest.raises(InvalidArgument, match=r"\$\.interval_s"):
        validate(decode(body))
    body = good()
    body["series"] = body["series"] * 2001  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=r"\$\.series "):
        validate(decode(body))


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "service": st.text(max_size=10),
            "route": st.text(max_size=10),
            "method": st.text(max_size=5),
            "status_class": st.sampled_from(["2xx", "5xx", "bad", ""]),
            "count": st.integers(-5, 20),
            "errors": st.integers(-5, 20),
            "sum": st.floats(allow_nan=True),
            "buckets": st.lists(st.integers(-2, 5), max_size=BUCKET_COUNT + 2),
        }
    )
)
def test_validation_never_crashes_and_accepted_pushes_ingest(fields: dict[str, object]) -> None:
    body = {"source": {"service": "s"}, "series": [fields]}
    push = decode(body)
    try:
        validate(push)
    except InvalidArgument as exc:
        field = str(exc.details["field"])
    else:
        field = None
        Aggregator(VirtualClock()).ingest(push)
    assert field is None or field.startswith("$.")
