# What counts as a failure: exception types, status codes, predicates.
#
# Breakers and retries both ask the same question of an outcome (an exception
# or a returned value): should it count against the dependency? Three answers:
#
#   FAILURE  - counts as a failure (a breaker records it; a retry retries it);
#   SUCCESS  - counts as a success (the call went through; an exception the
#              caller raised on purpose, e.g. a validation error);
#   IGNORE   - neither: the call did not really happen (resilience4j's
#              "ignored" exceptions); a breaker releases the permit.
#
# Rule 1: anything that is not an `Exception` (asyncio.CancelledError,
#         KeyboardInterrupt, SystemExit, GeneratorExit) is IGNORE, whatever the
#         configuration says: being cancelled is not the dependency's fault,
#         and such exceptions must always propagate untouched.
# Rule 2: `ignore_exceptions` wins over `record_exceptions`.
# Rule 3: a recorded exception is a FAILURE unless `record_failure(exc)` says
#         False, in which case it is a SUCCESS (resilience4j's predicate).
# Rule 4: a returned value is a FAILURE when `record_result(value)` is true or
#         its status code is in `failure_statuses`; otherwise SUCCESS.

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any

ExceptionTypes = tuple[type[BaseException], ...]


class Verdict(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    IGNORE = "ignore"


def status_of(value: object) -> int | None:
    """The HTTP-like status of a result: `.status_code`, `.status`, or the int itself."""
    for attr in ("status_code", "status"):
        status = getattr(value, attr, None)
        if isinstance(status, int):
            return status
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


class FailurePolicy:
    """Classifies exceptions and results; immutable once built."""

    __slots__ = (
        "_ignore",
        "_predicate",
        "_record",
        "_result_predicate",
        "_statuses",
        "checks_results",
    )

    def __init__(
        self,
        *,
        record_exceptions: ExceptionTypes = (Exception,),
        ignore_exceptions: ExceptionTypes = (),
        record_failure: Callable[[BaseException], bool] | None = None,
        record_result: Callable[[Any], bool] | None = None,
        failure_statuses: Iterable[int] = (),
    ) -> None:
        self._record = record_exceptions
        self._ignore = ignore_exceptions
        self._predicate = record_failure
        self._result_predicate = record_result
        self._statuses = frozenset(failure_statuses)
        # False when every returned value is a success: wrappers skip the check.
        self.checks_results = record_result is not None or bool(self._statuses)

    def exception(self, exc: BaseException) -> Verdict:
        """Verdict on a raised exception (see the rules in the module header)."""
        if not isinstance(exc, Exception) or isinstance(exc, self._ignore):
            return Verdict.IGNORE
        if not isinstance(exc, self._record):
            return Verdict.SUCCESS
        if self._predicate is not None and not self._predicate(exc):
            return Verdict.SUCCESS
        return Verdict.FAILURE

    def result_failed(self, value: object) -> bool:
        """True when a returned value counts as a failure."""
        if self._result_predicate is not None and self._result_predicate(value):
            return True
        return bool(self._statuses) and status_of(value) in self._statuses
