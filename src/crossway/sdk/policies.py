"""Call policies: how the SDK calls one service (timeouts, retries and their
budget, circuit breaker, bulkhead, outlier ejection, balancer).

Theory of operation
-------------------
A `CallPolicy` is a frozen msgspec Struct, the same document in code and on
the wire: `CallPolicy(timeout="2s", retries=RetrySpec(attempts=2))` in Python,
`{"timeout": "2s", "retries": {"attempts": 2}}` at the control plane's key
`/policies/{service}`. Durations are "250ms"-style strings or seconds.
Validation runs whenever a policy is built (in code or decoded from JSON) and
names the offending field as a JSON path (`$.retries.attempts`). A missing
section takes its default; `null` switches a section off (`"breaker": null`).

Which policy applies to a service — precedence, first match wins:

    1. the policy given in code for that service   (policies={"orders": ...})
    2. the control plane's /policies/{service}
    3. the default policy given in code              (default_policy=...)
    4. the control plane's /policies/default
    5. CallPolicy() — the defaults documented on each field

so code can pin a service, and operators tune everything code leaves open.
A `PolicyBook` holds the code and control-plane policies and tells its
listeners which services changed; `follow_control_plane` keeps the
control-plane half current: one listing (`GET /v1/policies`), then the watch
`GET /v1/watch?prefix=/policies/` from the listing's index; a stream that
breaks or reports compaction is followed by a fresh listing. While the control
plane is unreachable the last known policies stay in force. A control-plane
document this SDK cannot read (a newer field, a bad value) is logged and
ignored: the next source in the list above applies.

The builders (`build_*`) turn one policy into the pure objects of
crossway.balance and crossway.resilience; the transport folds them into a
per-service stack once per policy change, never per request.

Invariants
----------
- A `CallPolicy` that exists is valid: every duration parses, every count and
  percentage is in range.
- A `PolicyBook` listener hears every change of `policy_for(service)` (it may
  also hear of changes that leave the effective policy equal).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec

from crossway.balance import (
    Balancer,
    LeastRequest,
    Maglev,
    OutlierConfig,
    OutlierDetector,
    PeakEwma,
    RingHash,
    SmoothWeighted,
    ZoneAware,
)
from crossway.core.clock import Clock
from crossway.core.durations import parse_duration
from crossway.core.errors import InvalidArgument
from crossway.resilience import (
    Backoff,
    BreakerConfig,
    Bulkhead,
    CircuitBreaker,
    ConsecutiveBreaker,
    FailurePolicy,
    Jitter,
    RetryBudget,
    RetryPolicy,
)

log = logging.getLogger("crossway.sdk.policies")

Duration = str | float
ExceptionTypes = tuple[type[BaseException], ...]
POLICY_PREFIX = "/policies/"
DEFAULT_NAME = "default"
SERVER_ERRORS = frozenset(range(500, 600))


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
    Statuses in `on`, broken connections and per-try timeouts are retried
    only for idempotent methods (GET HEAD OPTIONS TRACE PUT DELETE), unless
    `non_idempotent` is true. A retry goes to another instance when there is one.
    """

    attempts: int = 3
    on: tuple[int, ...] = (502, 503, 504)
    non_idempotent: bool = False
    per_try_timeout: Duration | None = None
    backoff: BackoffSpec = BackoffSpec()
    budget: BudgetSpec | None = BudgetSpec()


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
    the load (needs the client's zone).
    """

    timeout: Duration | None = None
    retries: RetrySpec | None = RetrySpec()
    breaker: BreakerSpec | None = None
    bulkhead: BulkheadSpec | None = None
    outlier: OutlierSpec | None = OutlierSpec()
    balancer: BalancerName = "round_robin"
    hash_header: str | None = None
    zone_aware: bool = False

    def __post_init__(self) -> None:
        check_policy(self)


# -- validation -----------------------------------------------------------------------


def _fail(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field.removeprefix('$.')}: {message}", field=field)


def _seconds(value: Duration, field: str, *, positive: bool = False) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise _fail(field, str(exc)) from None
    if positive and seconds <= 0:
        raise _fail(field, "must be longer than zero")
    return seconds


def _within(value: float, field: str, low: float, high: float) -> None:
    if not low <= value <= high:
        raise _fail(field, f"must be between {low:g} and {high:g}, got {value:g}")


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


def _check_retries(spec: RetrySpec, at: str) -> None:
    _within(spec.attempts, f"{at}.attempts", 1, 10)
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
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise InvalidArgument(message, field=_field_of(message)) from None
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"not valid JSON: {exc}", field="$") from None


_AT_PATH = re.compile(r" - at `(\$[^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]*)`")


def _field_of(message: str) -> str:
    """The JSON path msgspec's message is about, down to a named field
    ("unknown field `x` - at `$.retries`" is about `$.retries.x`)."""
    at = _AT_PATH.search(message)
    path = at.group(1) if at else "$"
    named = _NAMED_FIELD.search(message)
    return f"{path}.{named.group(1)}" if named else path


def encode_policy(policy: CallPolicy) -> bytes:
    """JSON with only the fields that differ from their defaults."""
    return _encoder.encode(policy)


# -- builders: one policy -> pure policy objects -------------------------------------------


def build_balancer(policy: CallPolicy, *, zone: str | None, clock: Clock) -> Balancer:
    """The balancer the policy names, zone-aware around it when asked and the
    caller's zone is known."""

    def make() -> Balancer:
        name = policy.balancer
        if name == "least_request":
            return LeastRequest()
        if name == "peak_ewma":
            return PeakEwma(clock=clock)
        if name == "ring_hash":
            return RingHash()
        if name == "maglev":
            return Maglev()
        return SmoothWeighted()  # round robin that honours instance weights (nginx's)

    if policy.zone_aware and zone:
        return ZoneAware(local_zone=zone, inner=make)
    return make()


def build_outlier(policy: CallPolicy, *, clock: Clock) -> OutlierDetector | None:
    spec = policy.outlier
    if spec is None:
        return None
    config = OutlierConfig(
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
    return OutlierDetector(config, clock=clock)


Breaker = ConsecutiveBreaker | CircuitBreaker


def build_breaker(
    policy: CallPolicy, *, name: str, ignore: ExceptionTypes, clock: Clock
) -> Breaker | None:
    """The service's breaker; exceptions in `ignore` neither fail nor succeed."""
    spec = policy.breaker
    if spec is None:
        return None
    statuses = frozenset(spec.fail_on) or SERVER_ERRORS

    def failed(response: Any) -> bool:
        # A predicate on `status_code` rather than `failure_statuses`: one
        # attribute read per call instead of probing for a status attribute.
        return getattr(response, "status_code", None) in statuses

    if spec.kind == "consecutive":
        judge = FailurePolicy(ignore_exceptions=ignore, record_result=failed)
        return ConsecutiveBreaker(
            name,
            fail_max=spec.failures,
            reset_timeout=parse_duration(spec.open_for),
            success_threshold=spec.half_open_calls,
            policy=judge,
            clock=clock,
        )
    config = BreakerConfig(
        failure_rate_threshold=spec.failure_rate,
        sliding_window_size=spec.window,
        minimum_number_of_calls=spec.minimum_calls,
        wait_duration_in_open_state=parse_duration(spec.open_for),
        permitted_number_of_calls_in_half_open_state=spec.half_open_calls,
        ignore_exceptions=ignore,
        record_result=failed,
    )
    return CircuitBreaker(name, config, clock=clock)


def build_bulkhead(policy: CallPolicy, *, name: str) -> Bulkhead | None:
    spec = policy.bulkhead
    if spec is None:
        return None
    wait = None if spec.max_wait is None else parse_duration(spec.max_wait)
    return Bulkhead(
        name, max_concurrent=spec.max_concurrent, max_queue=spec.max_queue, max_wait=wait
    )


@dataclass(frozen=True, slots=True)
class Retries:
    """A policy's retries, folded: when to retry idempotent requests
    (`safe`) and the others (`unsafe`), the budget they share, and the
    per-try timeout. The transport drives them (first try inline, retries
    on the slow path); the delays and limits are `RetryPolicy`'s and
    `RetryBudget`'s."""

    safe: RetryPolicy
    unsafe: RetryPolicy
    budget: RetryBudget | None
    per_try_timeout: float | None


def build_retries(
    policy: CallPolicy,
    *,
    safe_errors: ExceptionTypes,
    unsent_errors: ExceptionTypes,
    abort_on: ExceptionTypes,
    clock: Clock,
) -> Retries | None:
    """The folded retries of `policy`, or None when it never retries.

    `safe_errors` are retried for idempotent requests, `unsent_errors` (the
    request never left) for every request; `abort_on` never.
    """
    spec = policy.retries
    if spec is None or spec.attempts <= 1:
        return None
    backoff = Backoff(
        base=parse_duration(spec.backoff.base),
        cap=parse_duration(spec.backoff.cap),
        jitter=Jitter(spec.backoff.jitter),
    )
    budget = None
    if spec.budget is not None:
        budget = RetryBudget(
            ttl=parse_duration(spec.budget.ttl),
            min_retries_per_sec=spec.budget.min_per_second,
            percent_can_retry=spec.budget.percent / 100.0,
            clock=clock,
        )
    safe = RetryPolicy(
        max_attempts=spec.attempts,
        backoff=backoff,
        retry_on=safe_errors,
        abort_on=abort_on,
        retry_on_statuses=frozenset(spec.on),
    )
    unsafe = RetryPolicy(
        max_attempts=spec.attempts, backoff=backoff, retry_on=unsent_errors, abort_on=abort_on
    )
    per_try = None if spec.per_try_timeout is None else parse_duration(spec.per_try_timeout)
    return Retries(safe, safe if spec.non_idempotent else unsafe, budget, per_try)


# -- which policy applies -------------------------------------------------------------------

Listener = Callable[[str | None], None]
"""Told the service whose policy may have changed; None: possibly every service."""


class PolicyBook:
    """Code and control-plane policies, and the precedence between them (see
    the module header). Mutated only from one thread (the event loop's);
    `policy_for` may be read from any."""

    def __init__(
        self,
        policies: Mapping[str, CallPolicy] | None = None,
        *,
        default: CallPolicy | None = None,
    ) -> None:
        self._code = dict(policies or {})
        self._code_default = default
        self._remote: dict[str, CallPolicy] = {}
        self._listeners: list[Listener] = []
        self._builtin = CallPolicy()

    def policy_for(self, service: str) -> CallPolicy:
        """The policy that applies to calls to `service` now."""
        for found in (
            self._code.get(service),
            self._remote.get(service),
            self._code_default,
            self._remote.get(DEFAULT_NAME),
        ):
            if found is not None:
                return found
        return self._builtin

    def remote(self) -> dict[str, CallPolicy]:
        """The control plane's policies as last seen."""
        return dict(self._remote)

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(service | None)` after each change; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def set_remote(self, name: str, policy: CallPolicy | None) -> None:
        """The control plane's policy for `name` (None: deleted)."""
        old = self._remote.pop(name, None) if policy is None else self._remote.get(name)
        if policy is not None:
            self._remote[name] = policy
        if old != policy:
            self._notify(None if name == DEFAULT_NAME else name)

    def replace_remote(self, policies: Mapping[str, CallPolicy]) -> None:
        """Adopt a full listing: what it lacks was deleted."""
        if dict(policies) != self._remote:
            self._remote = dict(policies)
            self._notify(None)

    def _notify(self, name: str | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(name)
            except Exception:
                log.exception("a call policy listener failed")


# -- following the control plane -----------------------------------------------------------


class PolicySource(Protocol):
    """What `follow_control_plane` needs of `crossway.sdk.control.ControlPlane`."""

    async def request(self, method: str, path: str, **kwargs: Any) -> Any: ...

    def sse(
        self, path: str, params: Mapping[str, str | int] | None = None
    ) -> AsyncIterator[Any]: ...


RECONNECT = Backoff(base=0.2, cap=10.0, jitter=Jitter.EQUAL)


class _Listing(msgspec.Struct):
    name: str
    policy: msgspec.Raw


_listing = msgspec.json.Decoder(list[_Listing])


async def follow_control_plane(book: PolicyBook, source: PolicySource) -> None:
    """Keep `book`'s control-plane policies current until cancelled.

    Never returns on its own; failures (control plane down, a broken stream)
    are logged once per outage and retried with backoff, keeping the last
    known policies. Cancellation closes the stream and propagates.
    """
    failures = 0
    while True:
        try:
            index = await _list(book, source)
            if failures:
                log.warning("call policies: following the control plane again")
            failures = 0
            await _watch(book, source, index)
        except Exception as exc:
            if failures == 0:
                log.warning(
                    "call policies: cannot follow the control plane (%s); "
                    "keeping the last known policies and retrying",
                    exc,
                )
            failures += 1
        await asyncio.sleep(RECONNECT.delay(failures, rand=random.random))


async def _list(book: PolicyBook, source: PolicySource) -> int:
    response = await source.request("GET", "/v1/policies")
    policies: dict[str, CallPolicy] = {}
    for entry in _listing.decode(response.content):
        policy = _readable(entry.name, bytes(entry.policy))
        if policy is not None:
            policies[entry.name] = policy
    book.replace_remote(policies)
    raw = response.headers.get("X-Crossway-Index", "")
    return int(raw) if raw.isdigit() else 0


async def _watch(book: PolicyBook, source: PolicySource, index: int) -> None:
    params: dict[str, str | int] = {"prefix": POLICY_PREFIX, "after": index}
    async for event in source.sse("/v1/watch", params):
        if event.event == "compacted":
            return  # events were lost: list again
        apply_event(book, event.event, event.data)


def apply_event(book: PolicyBook, kind: str, data: str) -> None:
    """Apply one watch event (`put`/`delete` of `/policies/{name}`) to `book`."""
    try:
        body = msgspec.json.decode(data)
        key = str(body["key"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return
    name = key.removeprefix(POLICY_PREFIX)
    if not key.startswith(POLICY_PREFIX) or not name or "/" in name:
        return
    if kind == "delete":
        book.set_remote(name, None)
    elif kind == "put" and "encoding" not in body:
        book.set_remote(name, _readable(name, str(body.get("value", "")).encode()))


def _readable(name: str, raw: bytes) -> CallPolicy | None:
    try:
        return decode_policy(raw)
    except InvalidArgument as exc:
        log.warning("call policy %r from the control plane ignored: %s", name, exc.message)
        return None
