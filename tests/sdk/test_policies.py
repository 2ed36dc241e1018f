"""Call policies: the document and its validation, precedence between code
and control plane, the builders, and following the control plane."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.balance import LeastRequest, Maglev, PeakEwma, RingHash, SmoothWeighted, ZoneAware
from crossway.core.clock import VirtualClock
from crossway.core.errors import InvalidArgument
from crossway.resilience import Backoff, CircuitBreaker, ConsecutiveBreaker, Jitter
from crossway.sdk import policies as policies_module
from crossway.sdk.policies import (
    BackoffSpec,
    BreakerSpec,
    BudgetSpec,
    BulkheadSpec,
    CallPolicy,
    OutlierSpec,
    PolicyBook,
    RetrySpec,
    apply_event,
    build_balancer,
    build_breaker,
    build_bulkhead,
    build_outlier,
    build_retries,
    decode_policy,
    encode_policy,
    follow_control_plane,
)

CLOCK = VirtualClock()


# -- the document ------------------------------------------------------------------------------


def test_defaults_encode_to_an_empty_document() -> None:
    assert encode_policy(CallPolicy()) == b"{}"
    assert decode_policy(b"{}") == CallPolicy()


def test_only_what_differs_is_encoded_and_it_round_trips() -> None:
    policy = CallPolicy(
        timeout="2s",
        retries=RetrySpec(attempts=2, on=(503,), budget=None),
        breaker=BreakerSpec(kind="rate", window=50),
        outlier=None,
        balancer="peak_ewma",
    )
    raw = encode_policy(policy)
    assert json.loads(raw) == {
        "timeout": "2s",
        "retries": {"attempts": 2, "on": [503], "budget": None},
        "breaker": {"kind": "rate", "window": 50},
        "outlier": None,
        "balancer": "peak_ewma",
    }
    assert decode_policy(raw) == policy


def test_null_switches_a_section_off_and_an_empty_object_takes_defaults() -> None:
    policy = decode_policy(b'{"retries": null, "breaker": {}, "bulkhead": {}}')
    assert policy.retries is None
    assert policy.breaker == BreakerSpec()
    assert policy.bulkhead == BulkheadSpec()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"retries": {"atempts": 2}}, "$.retries.atempts"),
        ({"timeout": []}, "$.timeout"),
        ({"timeout": "soon"}, "$.timeout"),
        ({"timeout": "0s"}, "$.timeout"),
        ({"retries": {"attempts": 0}}, "$.retries.attempts"),
        ({"retries": {"on": [503, 700]}}, "$.retries.on"),
        ({"retries": {"backoff": {"base": "fast"}}}, "$.retries.backoff.base"),
        ({"retries": {"backoff": {"jitter": "lots"}}}, "$.retries.backoff.jitter"),
        ({"retries": {"budget": {"ttl": "5m"}}}, "$.retries.budget.ttl"),
        ({"retries": {"per_try_timeout": "0ms"}}, "$.retries.per_try_timeout"),
        ({"breaker": {"failure_rate": 0}}, "$.breaker.failure_rate"),
        ({"breaker": {"kind": "sometimes"}}, "$.breaker.kind"),
        ({"breaker": {"open_for": "-1s"}}, "$.breaker.open_for"),
        ({"bulkhead": {"max_concurrent": 0}}, "$.bulkhead.max_concurrent"),
        ({"outlier": {"max_ejection_percent": 150}}, "$.outlier.max_ejection_percent"),
        ({"outlier": {"interval": "never"}}, "$.outlier.interval"),
        ({"balancer": "random"}, "$.balancer"),
        ({"hash_header": " "}, "$.hash_header"),
        ([], "$"),
    ],
)
def test_invalid_documents_name_the_field(raw: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_policy(json.dumps(raw).encode())
    assert info.value.details["field"] == field
    assert info.value.status == 400


def test_code_is_validated_when_the_policy_is_built() -> None:
    with pytest.raises(InvalidArgument, match=r"retries\.attempts"):
        CallPolicy(retries=RetrySpec(attempts=11))
    with pytest.raises(InvalidArgument, match="timeout"):
        CallPolicy(timeout="later")


def test_malformed_json_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        decode_policy(b"{not json")


durations = st.sampled_from(["10ms", "250ms", "1s", "2m", 0.5, 3.0])
retries = st.builds(
    RetrySpec,
    attempts=st.integers(1, 10),
    on=st.lists(st.integers(500, 599), max_size=3).map(tuple),
    non_idempotent=st.booleans(),
    per_try_timeout=st.none() | durations,
    budget=st.none() | st.builds(BudgetSpec, percent=st.floats(0, 100), ttl=st.just("5s")),
)
policies = st.builds(
    CallPolicy,
    timeout=st.none() | durations,
    retries=st.none() | retries,
    breaker=st.none() | st.builds(BreakerSpec, kind=st.sampled_from(["consecutive", "rate"])),
    bulkhead=st.none() | st.builds(BulkheadSpec, max_concurrent=st.integers(1, 1000)),
    outlier=st.none() | st.builds(OutlierSpec, consecutive_5xx=st.integers(1, 20)),
    balancer=st.sampled_from(["round_robin", "least_request", "peak_ewma", "ring_hash", "maglev"]),
    zone_aware=st.booleans(),
)


@given(policies)
def test_every_valid_policy_round_trips_through_json(policy: CallPolicy) -> None:
    assert decode_policy(encode_policy(policy)) == policy


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
sections = st.sampled_from(["timeout", "retries", "breaker", "bulkhead", "outlier", "balancer"])


@given(st.dictionaries(sections, json_values, max_size=4))
def test_any_json_is_accepted_or_refused_cleanly(doc: dict[str, Any]) -> None:
    raw = json.dumps(doc).encode()
    try:
        policy = decode_policy(raw)
    except InvalidArgument as exc:
        field = str(exc.details["field"])
    else:
        field = "$"
        assert decode_policy(encode_policy(policy)) == policy
    assert field.startswith("$")


# -- precedence --------------------------------------------------------------------------------


def test_precedence_code_then_plane_then_defaults() -> None:
    pinned, remote, code_default, remote_default = (
        CallPolicy(timeout=f"{n}s") for n in (1, 2, 3, 4)
    )
    book = PolicyBook({"orders": pinned}, default=code_default)
    book.replace_remote({"orders": CallPolicy(timeout="9s"), "users": remote})
    book.set_remote("default", remote_default)
    assert book.policy_for("orders") is pinned  # code wins over the plane
    assert book.policy_for("users") is remote  # the plane's own policy for the service
    assert book.policy_for("other") is code_default  # code's default wins over the plane's
    plane_only = PolicyBook()
    plane_only.set_remote("default", remote_default)
    assert plane_only.policy_for("other") is remote_default
    assert PolicyBook().policy_for("other") == CallPolicy()


def test_listeners_hear_which_service_changed() -> None:
    book = PolicyBook()
    heard: list[str | None] = []
    unsubscribe = book.on_change(heard.append)
    book.set_remote("orders", CallPolicy(timeout="1s"))
    book.set_remote("orders", CallPolicy(timeout="1s"))  # equal: no news
    book.set_remote("default", CallPolicy(timeout="2s"))  # every service may change
    book.set_remote("orders", None)
    book.replace_remote({"users": CallPolicy()})
    book.replace_remote({"users": CallPolicy()})
    assert heard == ["orders", None, "orders", None]
    unsubscribe()
    book.set_remote("x", CallPolicy())
    assert len(heard) == 4


def test_a_failing_listener_does_not_stop_the_others() -> None:
    book = PolicyBook()
    heard: list[str | None] = []

    def broken(name: str | None) -> None:
        raise RuntimeError("boom")

    book.on_change(broken)
    book.on_change(heard.append)
    book.set_remote("orders", CallPolicy())
    assert heard == ["orders"]


# -- builders ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("round_robin", SmoothWeighted),
        ("least_request", LeastRequest),
        ("peak_ewma", PeakEwma),
        ("ring_hash", RingHash),
        ("maglev", Maglev),
    ],
)
def test_the_named_balancer_is_built(name: Any, kind: type[Any]) -> None:
    assert isinstance(build_balancer(CallPolicy(balancer=name), zone=None, clock=CLOCK), kind)


def test_zone_awareness_needs_the_callers_zone() -> None:
    policy = CallPolicy(zone_aware=True)
    assert isinstance(build_balancer(policy, zone="eu-1", clock=CLOCK), ZoneAware)
    assert isinstance(build_balancer(policy, zone=None, clock=CLOCK), SmoothWeighted)


def test_breakers_of_both_kinds() -> None:
    ignore = (LookupError,)
    consecutive = build_breaker(
        CallPolicy(breaker=BreakerSpec(failures=2, open_for="5s")),
        name="orders",
        ignore=ignore,
        clock=CLOCK,
    )
    assert isinstance(consecutive, ConsecutiveBreaker)
    assert (consecutive.fail_max, consecutive.reset_timeout) == (2, 5.0)
    rate = build_breaker(
        CallPolicy(breaker=BreakerSpec(kind="rate", fail_on=(503,))),
        name="orders",
        ignore=ignore,
        clock=CLOCK,
    )
    assert isinstance(rate, CircuitBreaker)
    judge = rate.config.record_result
    assert judge is not None
    assert judge(FakeResponse(b"", {}, status_code=503))
    assert not judge(FakeResponse(b"", {}, status_code=500))
    assert rate.config.ignore_exceptions == ignore
    assert build_breaker(CallPolicy(), name="x", ignore=(), clock=CLOCK) is None


def test_bulkhead_and_outlier_settings_carry_over() -> None:
    bulkhead = build_bulkhead(
        CallPolicy(bulkhead=BulkheadSpec(max_concurrent=3, max_wait="1s")), name="orders"
    )
    assert bulkhead is not None
    assert (bulkhead.name, bulkhead.max_wait) == ("orders", 1.0)
    detector = build_outlier(CallPolicy(outlier=OutlierSpec(base_ejection_time="5s")), clock=CLOCK)
    assert detector is not None
    assert detector.config.base_ejection_time == 5.0
    assert detector.config.max_ejection_percent == 50.0
    assert build_outlier(CallPolicy(outlier=None), clock=CLOCK) is None


def test_retries_share_a_budget_and_split_by_idempotency() -> None:
    spec = RetrySpec(
        attempts=4,
        per_try_timeout="200ms",
        backoff=BackoffSpec(base="10ms", cap="1s", jitter="equal"),
    )
    retries = build_retries(
        CallPolicy(retries=spec),
        safe_errors=(OSError,),
        unsent_errors=(ConnectionRefusedError,),
        abort_on=(LookupError,),
        clock=CLOCK,
    )
    assert retries is not None
    assert retries.budget is not None
    assert retries.budget.percent_can_retry == 0.2
    assert retries.per_try_timeout == 0.2
    safe, unsafe = retries.safe, retries.unsafe
    assert safe.retry_on_statuses == frozenset({502, 503, 504})
    assert safe.retry_on == (OSError,)
    assert safe.abort_on == unsafe.abort_on == (LookupError,)
    assert unsafe.retry_on == (ConnectionRefusedError,)
    assert not unsafe.retry_on_statuses
    assert safe.backoff == Backoff(base=0.01, cap=1.0, jitter=Jitter.EQUAL)
    assert safe.max_attempts == unsafe.max_attempts == 4


def test_no_retries_when_off_or_a_single_attempt() -> None:
    for spec in (None, RetrySpec(attempts=1)):
        built = build_retries(
            CallPolicy(retries=spec), safe_errors=(), unsent_errors=(), abort_on=(), clock=CLOCK
        )
        assert built is None


def test_non_idempotent_retries_use_the_full_policy() -> None:
    retries = build_retries(
        CallPolicy(retries=RetrySpec(non_idempotent=True, budget=None)),
        safe_errors=(OSError,),
        unsent_errors=(),
        abort_on=(),
        clock=CLOCK,
    )
    assert retries is not None
    assert retries.unsafe is retries.safe
    assert retries.budget is None


# -- following the control plane ---------------------------------------------------------------


def event_data(key: str, value: str = "", **extra: Any) -> str:
    return json.dumps({"type": "put", "key": key, "value": value, **extra})


def test_apply_event_puts_and_deletes() -> None:
    book = PolicyBook()
    apply_event(book, "put", event_data("/policies/orders", '{"timeout": "1s"}'))
    assert book.remote() == {"orders": CallPolicy(timeout="1s")}
    apply_event(book, "put", event_data("/policies/orders", '{"timeout": "nope"}'))
    assert book.remote() == {}  # unreadable: ignored, the next source applies
    apply_event(book, "put", event_data("/policies/a/b", "{}"))
    apply_event(book, "put", event_data("/other/x", "{}"))
    apply_event(book, "put", event_data("/policies/bin", "e30=", encoding="base64"))
    apply_event(book, "put", "not json")
    assert book.remote() == {}
    apply_event(book, "put", event_data("/policies/users", "{}"))
    apply_event(book, "delete", event_data("/policies/users"))
    assert book.remote() == {}


@dataclass
class FakeResponse:
    content: bytes
    headers: Mapping[str, str]
    status_code: int = 200


@dataclass
class FakeEvent:
    event: str
    data: str
    id: str | None = None


@dataclass
class FakePlane:
    """The `request`/`sse` of a ControlPlane, scripted."""

    listings: list[list[dict[str, Any]] | Exception]
    streams: list[list[FakeEvent]]
    watched_after: list[int | str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def request(self, method: str, path: str, **kwargs: Any) -> FakeResponse:
        assert (method, path) == ("GET", "/v1/policies")
        if not self.listings:  # the script is over: hang, like a plane that never answers
            self.done.set()
            await asyncio.Event().wait()
        listing = self.listings.pop(0)
        if isinstance(listing, Exception):
            raise listing
        body = [{"name": n["name"], "policy": n["policy"]} for n in listing]
        return FakeResponse(msgspec.json.encode(body), {"X-Crossway-Index": "7"})

    async def sse(
        self, path: str, params: Mapping[str, str | int] | None = None
    ) -> AsyncIterator[FakeEvent]:
        assert path == "/v1/watch"
        assert params is not None
        assert params["prefix"] == "/policies/"
        self.watched_after.append(params["after"])
        for event in self.streams.pop(0) if self.streams else []:
            yield event


async def test_follow_lists_watches_and_relists_after_compaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(policies_module, "RECONNECT", Backoff(base=0, cap=0))
    plane = FakePlane(
        listings=[
            [{"name": "orders", "policy": {"timeout": "1s"}}, {"name": "bad", "policy": {"x": 1}}],
            ConnectionError("control plane down"),
            [{"name": "users", "policy": {}}],
        ],
        streams=[
            [
                FakeEvent("put", event_data("/policies/payments", '{"balancer": "maglev"}')),
                FakeEvent("compacted", "{}"),
            ],
            [FakeEvent("delete", event_data("/policies/users"))],
        ],
    )
    book = PolicyBook()
    heard: list[str | None] = []
    book.on_change(heard.append)
    task = asyncio.create_task(follow_control_plane(book, plane))
    await asyncio.wait_for(plane.done.wait(), 5)
    assert book.remote() == {}  # users was listed, then deleted
    assert plane.watched_after == [7, 7]
    assert heard[:2] == [None, "payments"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_follow_keeps_the_last_policies_while_the_plane_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(policies_module, "RECONNECT", Backoff(base=0, cap=0))
    plane = FakePlane(
        listings=[[{"name": "orders", "policy": {"timeout": "1s"}}]]
        + [ConnectionError("down")] * 5,
        streams=[[]],  # the first stream ends at once: list again, and fail
    )
    book = PolicyBook()
    task = asyncio.create_task(follow_control_plane(book, plane))
    await asyncio.wait_for(plane.done.wait(), 5)
    assert book.policy_for("orders") == CallPolicy(timeout="1s")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_retry_statuses_have_a_name_yaml_cannot_turn_into_true() -> None:
    from crossway.traffic.policy import RetrySpec, decode_policy

    spec = decode_policy(b'{"retries": {"statuses": [503]}}').retries
    assert spec is not None
    assert spec.retry_statuses == (503,)
    older = decode_policy(b'{"retries": {"on": [500]}}').retries
    assert older is not None
    assert older.retry_statuses == (500,)
    assert RetrySpec().retry_statuses == (502, 503, 504)
    with pytest.raises(InvalidArgument) as both:
        decode_policy(b'{"retries": {"statuses": [503], "on": [500]}}')
    assert both.value.details["field"] == "$.retries.statuses"
