"""Whether a failed try of a request may be tried again: the route's
`retries` section as one pure decision.

Theory of operation
-------------------
After each try the engine knows one of: a status from the upstream, or a
failure before any status — `connect-failure` (nothing was sent), `reset`
(the connection broke after the request went out) or `timeout` (the
per-try timeout fired). `RetryRule.should_retry` answers from that, the
method and the number of tries made, as Envoy's `retry_on` does:

    connect-failure    the connection could not be made
    reset              the connection broke before a full answer
    5xx                any 5xx status, and per-try timeouts
    gateway-error      502, 503, 504, and per-try timeouts
    retriable-status   a status listed in `statuses` (listing statuses is
                       enough: a listed status is always retriable)

A connect failure is safe to retry for every method: the upstream never
saw the request. Everything else may have reached the upstream, so it is
retried only for idempotent methods (RFC 9110 section 9.2.2) unless the
route says `non_idempotent: true`. The retry budget (how many retries the
recent traffic allows) is the engine's `crossway.resilience` budget, asked
after this rule says yes.

Invariants
----------
- Never more than `attempts` tries in all.
- A non-idempotent method is retried only after a connect failure, unless
  `non_idempotent` is set.
"""

from __future__ import annotations

from typing import Literal

from crossway.proxy.routes.model import Retries, seconds

Failure = Literal["connect-failure", "reset", "timeout"]
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
GATEWAY_ERRORS = frozenset({502, 503, 504})


class RetryRule:
    """A compiled `Retries` section (see the module header)."""

    __slots__ = ("any_method", "attempts", "conditions", "per_try_timeout", "statuses")

    def __init__(self, spec: Retries) -> None:
        self.attempts = spec.attempts
        self.conditions = frozenset(spec.conditions)
        self.statuses = frozenset(spec.statuses)
        self.any_method = spec.non_idempotent
        per_try = spec.per_try_timeout
        self.per_try_timeout = (
            seconds(per_try, "$.retries.per_try_timeout") if per_try is not None else None
        )

    def should_retry(
        self, *, tries: int, method: str, status: int | None = None, failure: Failure | None = None
    ) -> bool:
        """Whether to try again after `tries` tries, the last of which ended
        with `status` or `failure` (give one of them)."""
        if tries >= self.attempts:
            return False
        if failure == "connect-failure":
            return "connect-failure" in self.conditions
        if not (self.any_method or method in IDEMPOTENT):
            return False
        if failure is not None:
            return self._retries_failure(failure)
        return status is not None and self._retries_status(status)

    def _retries_failure(self, failure: Failure) -> bool:
        if failure == "reset":
            return "reset" in self.conditions
        return "5xx" in self.conditions or "gateway-error" in self.conditions

    def _retries_status(self, status: int) -> bool:
        conditions = self.conditions
        if "5xx" in conditions and 500 <= status <= 599:
            return True
        if "gateway-error" in conditions and status in GATEWAY_ERRORS:
            return True
        return status in self.statuses
