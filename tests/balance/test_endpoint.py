from __future__ import annotations

import gc

import pytest

import crossway.balance as balance
from crossway.balance import NO_CALL, Endpoint, LeastRequest
from crossway.core.errors import InvalidArgument


def test_public_surface_is_deliberate() -> None:
    assert sorted(balance.__all__) == [
        "Balancer",
        "Call",
        "Endpoint",
        "LeastRequest",
        "Maglev",
        "NO_CALL",
        "Outcome",
        "OutlierConfig",
        "OutlierDetector",
        "PeakEwma",
        "RingHash",
        "RoundRobin",
        "SmoothWeighted",
        "ZoneAware",
    ]
    for name in balance.__all__:
        assert getattr(balance, name) is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": ""}, "id"),
        ({"weight": 0}, "weight"),
        ({"weight": True}, "weight"),
        ({"weight": 1.5}, "weight"),
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
    ],
)
def test_endpoint_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"id": "a", "address": "10.0.0.1", "port": 80}
    with pytest.raises(InvalidArgument, match=message):
        Endpoint(**{**base, **kwargs})  # type: ignore[arg-type]


def test_endpoint_is_an_immutable_hashable_value() -> None:
    a = Endpoint("a", "10.0.0.1", 80, metadata={"version": "v2"})
    b = Endpoint("a", "10.0.0.1", 80, metadata={"version": "v2"})
    assert a == b
    assert hash(a) == hash(b)
    assert {a, b} == {a}
    with pytest.raises(AttributeError):
        a.weight = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.metadata["version"] = "v3"  # type: ignore[index]


def test_authority_brackets_ipv6() -> None:
    assert Endpoint("a", "10.0.0.1", 80).authority == "10.0.0.1:80"
    assert Endpoint("b", "::1", 8080).authority == "[::1]:8080"


def test_call_ends_once_whatever_the_caller_does() -> None:
    lb = LeastRequest()
    ep = Endpoint("a", "10.0.0.1", 80)
    lb.update([ep])
    call = lb.begin(ep)
    assert lb.pending("a") == 1
    call.end()
    call.end(ok=False)
    assert lb.pending("a") == 0


def test_call_as_context_manager_ends_on_success_and_on_error() -> None:
    lb = LeastRequest()
    ep = Endpoint("a", "10.0.0.1", 80)
    lb.update([ep])
    with lb.begin(ep):
        assert lb.pending("a") == 1
    assert lb.pending("a") == 0

    def reset() -> None:
        with lb.begin(ep):
            raise RuntimeError("upstream reset")

    with pytest.raises(RuntimeError):
        reset()
    assert lb.pending("a") == 0


def test_no_call_is_inert() -> None:
    NO_CALL.end()
    with NO_CALL as call:
        assert call is NO_CALL


def test_a_dropped_call_ends_itself() -> None:
    lb = LeastRequest()
    ep = Endpoint("a", "10.0.0.1", 80)
    lb.update([ep])
    lb.begin(ep)  # result dropped on the floor
    gc.collect()
    assert lb.pending("a") == 0
