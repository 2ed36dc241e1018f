from hypothesis import given
from hypothesis import strategies as st

from crossway.proxy.routes import Backend, Retries, Route
from crossway.proxy.routes.actions import compile_actions
from crossway.proxy.routes.retry import IDEMPOTENT, RetryRule

METHODS = st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "POST", "PATCH"])
CONDITIONS = st.lists(
    st.sampled_from(["connect-failure", "reset", "5xx", "gateway-error", "retriable-status"]),
    unique=True,
).map(tuple)
OUTCOMES = st.one_of(
    st.tuples(st.integers(100, 599), st.none()),
    st.tuples(st.none(), st.sampled_from(["connect-failure", "reset", "timeout"])),
)


def rule(**spec: object) -> RetryRule:
    return RetryRule(Retries(**spec))  # type: ignore[arg-type]


def test_the_default_rule_never_retries() -> None:
    assert not rule().should_retry(tries=1, method="GET", failure="connect-failure")


def test_conditions() -> None:
    retries = rule(attempts=3, conditions=("gateway-error", "reset"), statuses=(429,))
    assert retries.should_retry(tries=1, method="GET", status=503)
    assert not retries.should_retry(tries=1, method="GET", status=500)
    assert retries.should_retry(tries=2, method="GET", status=429)
    assert not retries.should_retry(tries=3, method="GET", status=503)
    assert retries.should_retry(tries=1, method="GET", failure="reset")
    assert retries.should_retry(tries=1, method="GET", failure="timeout")
    assert not retries.should_retry(tries=1, method="GET", failure="connect-failure")
    assert not retries.should_retry(tries=1, method="POST", status=503)
    assert rule(attempts=2, conditions=("5xx",)).should_retry(tries=1, method="GET", status=500)


def test_non_idempotent_methods_need_the_route_to_say_so() -> None:
    told = rule(attempts=2, conditions=("5xx",), non_idempotent=True)
    assert told.should_retry(tries=1, method="POST", status=502)
    default = rule(attempts=2)
    assert default.should_retry(tries=1, method="POST", failure="connect-failure")
    assert not default.should_retry(tries=1, method="POST", failure="reset")


@given(st.integers(1, 10), CONDITIONS, st.booleans(), METHODS, st.integers(1, 12), OUTCOMES)
def test_invariants(
    attempts: int,
    conditions: tuple[str, ...],
    non_idempotent: bool,
    method: str,
    tries: int,
    outcome: tuple[int | None, str | None],
) -> None:
    retries = rule(attempts=attempts, conditions=conditions, non_idempotent=non_idempotent)
    status, failure = outcome
    again = retries.should_retry(
        tries=tries,
        method=method,
        status=status,
        failure=failure,  # type: ignore[arg-type]
    )
    if tries >= attempts:
        assert not again
    if again and method not in IDEMPOTENT and not non_idempotent:
        assert failure == "connect-failure"
    if status is not None and status < 500:
        assert not again


def test_actions_carry_the_rule_and_the_timeouts_in_seconds() -> None:
    route = Route(
        backends=(Backend(service="a"),),
        timeout="5s",
        idle_timeout="1m",
        retries=Retries(attempts=2, per_try_timeout="250ms"),
    )
    actions = compile_actions(route)
    assert (actions.timeout, actions.idle_timeout) == (5.0, 60.0)
    assert actions.retry.attempts == 2
    assert actions.retry.per_try_timeout == 0.25
    assert compile_actions(Route(backends=(Backend(service="a"),))).timeout is None
