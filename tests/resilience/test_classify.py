"""Failure classification: the rules in classify.py's header, one by one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from crossway.resilience.classify import FailurePolicy, Verdict, status_of


@dataclass
class WithStatusCode:
    status_code: int


@dataclass
class WithStatus:
    status: int


@pytest.mark.parametrize(
    ("value", "status"),
    [
        (WithStatusCode(502), 502),
        (WithStatus(404), 404),
        (503, 503),
        (True, None),
        ("503", None),
        (None, None),
    ],
)
def test_status_of(value: object, status: int | None) -> None:
    assert status_of(value) == status


@pytest.mark.parametrize(
    "exc", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(0), GeneratorExit()]
)
def test_rule_1_base_exceptions_are_always_ignored(exc: BaseException) -> None:
    policy = FailurePolicy(record_exceptions=(BaseException,))
    assert policy.exception(exc) is Verdict.IGNORE


def test_rule_2_ignore_wins_over_record() -> None:
    policy = FailurePolicy(record_exceptions=(OSError,), ignore_exceptions=(TimeoutError,))
    assert policy.exception(TimeoutError()) is Verdict.IGNORE
    assert policy.exception(ConnectionError()) is Verdict.FAILURE
    assert policy.exception(ValueError()) is Verdict.SUCCESS


def test_rule_3_the_predicate_can_excuse_a_recorded_exception() -> None:
    policy = FailurePolicy(record_failure=lambda exc: "retryable" in str(exc))
    assert policy.exception(RuntimeError("retryable")) is Verdict.FAILURE
    assert policy.exception(RuntimeError("bad input")) is Verdict.SUCCESS


def test_rule_4_results() -> None:
    plain = FailurePolicy()
    assert not plain.checks_results
    assert not plain.result_failed(WithStatusCode(500))
    policy = FailurePolicy(failure_statuses=(500, 503), record_result=lambda v: v == "bad")
    assert policy.checks_results
    assert policy.result_failed(WithStatusCode(503))
    assert policy.result_failed("bad")
    assert not policy.result_failed(WithStatusCode(200))
    assert not policy.result_failed("good")
