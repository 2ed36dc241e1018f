"""The call-policy document: how a caller treats one service (timeouts,
retries and their budget, circuit breaker, bulkhead, outlier ejection,
balancer), shared by the SDK's client and the gateway.

Theory of operation
-------------------
A `CallPolicy` is a frozen msgspec Struct, the same document in code and on
the wire: `CallPolicy(timeout="2s", retries=RetrySpec(attempts=2))` in Python,
`{"timeout": "2s", "retries": {"attempts": 2}}` at the control plane's key
`/policies/{service}` (`/policies/default` for every service without its
own). Durations are "250ms"-style strings or seconds. Validation runs
whenever a policy is built (in code or decoded from JSON) and names the
offending field as a JSON path (`$.retries.attempts`). A missing section
takes its default; `null` switches a section off (`"breaker": null`).

This module is only the document: what each consumer makes of it (the SDK's
transport stack in crossway.sdk.policies, the gateway's per-service limits
in crossway.proxy.overload) lives with that consumer.

Invariants
----------
- A `CallPolicy` that exists is valid: every duration parses, every count and
  percentage is in range.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from crossway.balance import OutlierConfig
from crossway.core.durations import parse_duration
from crossway.core.validation import decode_document
from crossway.core.validation import duration_at as _seconds
from crossway.core.validation import field_error as _fail
from crossway.core.validation import within as _within

Duration = str | float
POLICY_PREFIX = "/policies/"
DEFAULT_NAME = "default"
SERVER_ERRORS = frozenset(range(500, 600))


DEFAULT_RETRY_STATUSES = (502, 503, 504)


class _Spec(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    """Frozen (hashable, safe to share), strict (unknown fields are errors),
    and encoded with only the fields that differ from their defaults."""


class BackoffSpec(_Spec, frozen=True):
    """Exponential backoff between attempts: base x 2^n, capped, jittered."""

    base: Duration = "25ms"
    cap: Duration = "1s"
    jitter: Literal["full", "equal", "decorrelated", "none"] = "full"


class BudgetSpec(_Spec, frozen=True):
    """Finagle's retry budget: retries limited to `percent` of recent requests
    (over `ttl`), plus `min_per_second` so quiet callers can still retry."""

    percent: float = 20.0
    min_per_second: float = 10.0
    ttl: Duration = "10s"


class RetrySpec(_Spec, frozen=True):
    """`attempts` counts every try, the first included (1: never retry).

    Connection failures (nothing was sent) are retried for every method.
    Statuses in `statuses`, broken connections and per-try timeouts are
    retried only for idempotent methods (GET HEAD OPTIONS TRACE PUT DELETE),
    unless `non_idempotent` is true. A retry goes to another instance when
    there is one.

    `on` is the older name of `statuses`, still read. YAML 1.1 reads a bare
    `on:` key as the boolean true, which is why `statuses` is the name to
    write; a document gives one or the other.
    """

    attempts: int = 3
    statuses: tuple[int, ...] | None = None
    on: tuple[int, ...] = DEFAULT_RETRY_STATUSES
    non_idempotent: bool = False
    per_try_timeout: Duration | None = None
    backoff: BackoffSpec = BackoffSpec()
    budget: BudgetSpec | None = BudgetSpec()

    @property
    def retry_statuses(self) -> tuple[int, ...]:
        """The statuses retried: `statuses` when given, else `on`."""
        return self.on if self.statuses is None else self.statuses


class BreakerSpec(_Spec, frozen=True):
    """One breaker per service, judging whole calls (after their retries).

    `consecutive`: opens after `failures` failed calls in a row. `rate`:
    opens when `failure_rate`% of the last `window` calls failed (once at
    least `minimum_calls` were seen). Open for `open_for`, then
    `half_open_calls` probes decide. A failure is a transport error, a
    timeout, or a status in `fail_on` (empty: every 5xx).
    """

    kind: Literal["consecutive", "rate"] = "consecutive"
    failures: int = 5
    failure_rate: float = 50.0
    window: int = 100
    minimum_calls: int = 20
    open_for: Duration = "30s"
    half_open_calls: int = 1
    fail_on: tuple[int, ...] = ()


class BulkheadSpec(_Spec, frozen=True):
    """At most `max_concurrent` calls in flight to the service; `max_queue`
    more may wait up to `max_wait` (None: as long as the deadline allows)."""

    max_concurrent: int = 100
    max_queue: int = 0
    max_wait: Duration | None = None


class OutlierSpec(_Spec, frozen=True):
    """Envoy's outlier detection, per instance. `max_ejection_percent` is 50
    here, not Envoy's 10: client-side sets are small, and 10% of three
    instances would never allow an ejection."""

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    interval: Duration = "10s"
    base_ejection_time: Duration = "30s"
    max_ejection_time: Duration = "300s"
    max_ejection_percent: float = 50.0
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900


BalancerName = Literal["round_robin", "least_request", "peak_ewma", "ring_hash", "maglev"]


class CallPolicy(_Spec, frozen=True):
    """How to call one service; see the module header and docs/sdk.md.

    `timeout` bounds a whole call, retries and waits included (None: only
    the HTTP client's own timeouts). `round_robin` is nginx's smooth weighted
    round robin (equal weights: plain rotation). `hash_header` names the request header
    whose value `ring_hash`/`maglev` hash (without it, picks are random).
    `zone_aware` prefers instances in the caller's zone while they can take
    the load (needs the client's zone). `max_connections` caps the open
    connections to each instance of the service from one proxy process (the
    gateway's pools; callers beyond it wait for a connection, Envoy's
    `max_connections`); the SDK's HTTP client keeps its own pool limits.
    """

    timeout: Duration | None = None
    retries: RetrySpec | None = RetrySpec()
    breaker: BreakerSpec | None = None
    bulkhead: BulkheadSpec | None = None
    outlier: OutlierSpec | None = OutlierSpec()
    balancer: BalancerName = "round_robin"
    hash_header: str | None = None
    zone_aware: bool = False
    max_connections: int | None = None

    def __post_init__(self) -> None:
        check_policy(self)


# -- validation -----------------------------------------------------------------------


def _statuses(values: tuple[int, ...], field: str) -> None:
    for status in values:
        _within(status, field, 100, 599)


def check_policy(policy: CallPolicy) -> None:
    """Raise InvalidArgument naming the first field out of range (`$.a.b`)."""
    if policy.timeout is not None:
        _seconds(policy.timeout, "$.timeout", positive=True)
    if policy.retries is not None:
        _check_retries(policy.retries, "$.retries")
    if policy.breaker is not None:
        _check_breaker(policy.breaker, "$.breaker")
    if policy.bulkhead is not None:
        spec = policy.bulkhead
        _within(spec.max_concurrent, "$.bulkhead.max_concurrent", 1, 1_000_000)
        _within(spec.max_queue, "$.bulkhead.max_queue", 0, 1_000_000)
        if spec.max_wait is not None:
            _seconds(spec.max_wait, "$.bulkhead.max_wait")
    if policy.outlier is not None:
        _check_outlier(policy.outlier, "$.outlier")
    if policy.hash_header is not None and not policy.hash_header.strip():
        raise _fail("$.hash_header", "must name a header")
    if policy.max_connections is not None:
        _within(policy.max_connections, "$.max_connections", 1, 1_000_000)


def _check_retries(spec: RetrySpec, at: str) -> None:
    _within(spec.attempts, f"{at}.attempts", 1, 10)
    if spec.statuses is not None:
        if spec.on != DEFAULT_RETRY_STATUSES:
            raise _fail(f"{at}.statuses", "give statuses or its older name on, not both")
        _statuses(spec.statuses, f"{at}.statuses")
    _statuses(spec.on, f"{at}.on")
    if spec.per_try_timeout is not None:
        _seconds(spec.per_try_timeout, f"{at}.per_try_timeout", positive=True)
    _seconds(spec.backoff.base, f"{at}.backoff.base")
    _seconds(spec.backoff.cap, f"{at}.backoff.cap")
    if spec.budget is not None:
        _within(spec.budget.percent, f"{at}.budget.percent", 0, 1000)
        _within(spec.budget.min_per_second, f"{at}.budget.min_per_second", 0, 1_000_000)
        _within(_seconds(spec.budget.ttl, f"{at}.budget.ttl"), f"{at}.budget.ttl", 1, 60)


def _check_breaker(spec: BreakerSpec, at: str) -> None:
    _within(spec.failures, f"{at}.failures", 1, 1_000_000)
    if not 0 < spec.failure_rate <= 100:
        raise _fail(f"{at}.failure_rate", "must be above 0 and at most 100")
    _within(spec.window, f"{at}.window", 1, 1_000_000)
    _within(spec.minimum_calls, f"{at}.minimum_calls", 1, 1_000_000)
    _seconds(spec.open_for, f"{at}.open_for", positive=True)
    _within(spec.half_open_calls, f"{at}.half_open_calls", 1, 1000)
    _statuses(spec.fail_on, f"{at}.fail_on")


def _check_outlier(spec: OutlierSpec, at: str) -> None:
    _within(spec.consecutive_5xx, f"{at}.consecutive_5xx", 1, 1_000_000)
    _within(spec.consecutive_gateway_failure, f"{at}.consecutive_gateway_failure", 1, 1_000_000)
    for name in ("interval", "base_ejection_time", "max_ejection_time"):
        _seconds(getattr(spec, name), f"{at}.{name}", positive=True)
    _within(spec.max_ejection_percent, f"{at}.max_ejection_percent", 0, 100)
    _within(spec.success_rate_minimum_hosts, f"{at}.success_rate_minimum_hosts", 1, 1_000_000)
    _within(spec.success_rate_request_volume, f"{at}.success_rate_request_volume", 1, 1_000_000)
    _within(spec.success_rate_stdev_factor, f"{at}.success_rate_stdev_factor", 0, 1_000_000)


_decoder = msgspec.json.Decoder(CallPolicy)
_encoder = msgspec.json.Encoder()


def decode_policy(raw: bytes | str) -> CallPolicy:
    """A policy from JSON; InvalidArgument naming the field (`$.retries.attempts`)."""
    return decode_document(_decoder, raw)


def encode_policy(policy: CallPolicy) -> bytes:
    """JSON with only the fields that differ from their defaults."""
    return _encoder.encode(policy)


def outlier_config(spec: OutlierSpec) -> OutlierConfig:
    """The detector settings of crossway.balance for an `outlier` section."""
    return OutlierConfig(
        consecutive_5xx=spec.consecutive_5xx,
        consecutive_gateway_failure=spec.consecutive_gateway_failure,
        interval=parse_duration(spec.interval),
        base_ejection_time=parse_duration(spec.base_ejection_time),
        max_ejection_time=parse_duration(spec.max_ejection_time),
        max_ejection_percent=spec.max_ejection_percent,
        success_rate_minimum_hosts=spec.success_rate_minimum_hosts,
        success_rate_request_volume=spec.success_rate_request_volume,
        success_rate_stdev_factor=spec.success_rate_stdev_factor,
    )
