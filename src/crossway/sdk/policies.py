"""Call policies: how the SDK calls one service (timeouts, retries and their
budget, circuit breaker, bulkhead, outlier ejection, balancer).

The document (`CallPolicy` and its sections, validation, JSON) is
crossway.traffic.policy's, re-exported here; this module holds what the SDK
makes of it: which policy applies, following the control plane, and the
builders of the transport's stack.

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
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from crossway.balance import (
    Balancer,
    LeastRequest,
    Maglev,
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
from crossway.traffic.policy import (
    DEFAULT_NAME,
    POLICY_PREFIX,
    SERVER_ERRORS,
    BackoffSpec,
    BalancerName,
    BreakerSpec,
    BudgetSpec,
    BulkheadSpec,
    CallPolicy,
    Duration,
    OutlierSpec,
    RetrySpec,
    check_policy,
    decode_policy,
    encode_policy,
    outlier_config,
)

log = logging.getLogger("crossway.sdk.policies")

ExceptionTypes = tuple[type[BaseException], ...]

# The document itself lives in crossway.traffic.policy (the gateway reads it
# too); its names stay importable from here.
__all__ = [
    "DEFAULT_NAME",
    "POLICY_PREFIX",
    "SERVER_ERRORS",
    "BackoffSpec",
    "BalancerName",
    "BreakerSpec",
    "BudgetSpec",
    "BulkheadSpec",
    "CallPolicy",
    "Duration",
    "OutlierSpec",
    "PolicyBook",
    "Retries",
    "RetrySpec",
    "apply_event",
    "build_balancer",
    "build_breaker",
    "build_bulkhead",
    "build_outlier",
    "build_retries",
    "check_policy",
    "decode_policy",
    "encode_policy",
    "follow_control_plane",
]


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
    return OutlierDetector(outlier_config(spec), clock=clock)


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
        retry_on_statuses=frozenset(spec.retry_statuses),
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
