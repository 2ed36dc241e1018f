"""Outlier detection: passive health checking from real traffic (Envoy's model).

Theory of operation
-------------------
The detector is fed the outcome of every request (`record`) and answers which
endpoints are currently ejected (`ejected`). Balancers exclude those via
`set_ejected`; the proxy typically does, per request,

    balancer.set_ejected(detector.ejected(now))   # O(1) while nothing changed

Three detectors, as in Envoy:

- consecutive 5xx: `consecutive_5xx` server errors in a row (gateway errors
  included) eject the endpoint, with probability `enforcing_consecutive_5xx`%;
- consecutive gateway failures: `consecutive_gateway_failure` 502/503/504 or
  connection-level failures in a row, enforced with
  `enforcing_consecutive_gateway_failure`% (0 by default, as in Envoy: such
  failures already count toward the 5xx streak);
- success rate: every `interval`, among endpoints with at least
  `success_rate_request_volume` requests in the interval, and only when there
  are at least `success_rate_minimum_hosts` such endpoints, eject those whose
  success rate is below mean - (success_rate_stdev_factor / 1000) x stdev
  (population standard deviation; factor 1900 = 1.9 sd).

An ejection lasts base_ejection_time x k, capped by max_ejection_time, where k
counts the endpoint's recent ejections: it grows by one per ejection (while
the product is below the cap) and shrinks by one at each interval sweep that
finds the endpoint back in service for at least one interval, so a flapping
endpoint stays out longer and longer, and a recovered one is forgiven.

No ejection may take the ejected share of endpoints above
`max_ejection_percent` (unless `always_eject_one_host` and none is ejected).

Time is lazy: there is no timer. Every call with a `now` first runs the sweeps
and expiries that fell due since the previous call, in time order, so the
detector is pure and runs on a `VirtualClock` in tests. Results for ejected or
unknown endpoints are ignored (they are calls that were in flight).

Invariants
----------
- ejected() is exactly the tracked endpoints whose ejection has not expired.
- (ejected count) x 100 <= max_ejection_percent x (tracked count), except for
  the single ejection `always_eject_one_host` allows, or after `update`
  shrinks the set (existing ejections are kept; new ones are refused).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from math import ceil, sqrt
from typing import Any

from crossway.balance.endpoint import Endpoint
from crossway.core.clock import Clock, SystemClock
from crossway.core.durations import parse_duration
from crossway.core.errors import InvalidArgument


class Outcome(enum.Enum):
    """What one request to an endpoint came to."""

    SUCCESS = "success"
    ERROR = "error"  # a 5xx that is not a gateway error (500, 501, 505 ...)
    GATEWAY_ERROR = "gateway_error"  # 502/503/504, connect failure, reset, timeout

    @classmethod
    def from_status(cls, status: int) -> Outcome:
        if status in (502, 503, 504):
            return cls.GATEWAY_ERROR
        return cls.ERROR if 500 <= status <= 599 else cls.SUCCESS


_DURATIONS = ("interval", "base_ejection_time", "max_ejection_time")
_PERCENTS = (
    "max_ejection_percent",
    "enforcing_consecutive_5xx",
    "enforcing_consecutive_gateway_failure",
    "enforcing_success_rate",
)


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Outlier detection settings; names, units and defaults follow Envoy.

    Durations are seconds (`from_mapping` also takes "10s"-style strings);
    percentages are 0..100.
    """

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0
    enforcing_consecutive_5xx: float = 100.0
    enforcing_consecutive_gateway_failure: float = 0.0
    enforcing_success_rate: float = 100.0
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    always_eject_one_host: bool = False

    def __post_init__(self) -> None:
        if self.consecutive_5xx < 1 or self.consecutive_gateway_failure < 1:
            raise InvalidArgument("consecutive thresholds must be >= 1")
        if self.interval <= 0 or self.base_ejection_time <= 0 or self.max_ejection_time <= 0:
            raise InvalidArgument("interval and ejection times must be > 0")
        for name in _PERCENTS:
            if not 0 <= getattr(self, name) <= 100:
                raise InvalidArgument(f"{name} must be within 0..100")
        if self.success_rate_minimum_hosts < 1 or self.success_rate_request_volume < 1:
            raise InvalidArgument("success_rate minimum hosts and request volume must be >= 1")
        if self.success_rate_stdev_factor < 0:
            raise InvalidArgument("success_rate_stdev_factor must not be negative")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> OutlierConfig:
        """Build from configuration; InvalidArgument on unknown keys or bad values."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise InvalidArgument(f"unknown outlier detection settings: {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, value in raw.items():
            try:
                values[name] = parse_duration(value) if name in _DURATIONS else value
            except ValueError as exc:
                raise InvalidArgument(f"{name}: {exc}") from None
        return cls(**values)

    @property
    def max_multiplier(self) -> int:
        """The ejection count beyond which ejection time stops growing."""
        return max(1, ceil(self.max_ejection_time / self.base_ejection_time))


class _Host:
    __slots__ = (
        "consecutive_5xx",
        "consecutive_gateway",
        "ejected_until",
        "failures",
        "multiplier",
        "successes",
        "unejected_at",
    )

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.successes = 0
        self.failures = 0
        self.multiplier = 0
        self.ejected_until: float | None = None
        self.unejected_at: float | None = None

    def reset_counters(self) -> None:
        self.consecutive_5xx = self.consecutive_gateway = 0
        self.successes = self.failures = 0


class OutlierDetector:
    """Ejects endpoints that fail; see the module header."""

    __slots__ = ("_clock", "_config", "_frozen", "_hosts", "_next_sweep", "_rng", "next_change")

    def __init__(
        self,
        config: OutlierConfig | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config or OutlierConfig()
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._hosts: dict[str, _Host] = {}
        self._next_sweep = self._clock.now() + self._config.interval
        self.next_change = self._next_sweep
        """Before this clock time only `record` and `update` change `ejected()`
        (a sweep or an ejection's end falls due at it): callers may skip
        asking until then."""
        self._frozen: frozenset[str] | None = frozenset()

    @property
    def config(self) -> OutlierConfig:
        return self._config

    def update(self, endpoints: Iterable[Endpoint | str]) -> None:
        """Track exactly these endpoints (or ids); state of those that stay is kept."""
        ids = [e.id if isinstance(e, Endpoint) else e for e in endpoints]
        old = self._hosts
        self._hosts = {i: old.get(i) or _Host() for i in ids}
        self._frozen = None
        self._reschedule()

    def record(self, endpoint_id: str, outcome: Outcome, now: float | None = None) -> None:
        """Account one request's outcome; may eject the endpoint at once."""
        now = self._advance(now)
        host = self._hosts.get(endpoint_id)
        if host is None or host.ejected_until is not None:
            return
        if outcome is Outcome.SUCCESS:
            host.successes += 1
            host.consecutive_5xx = host.consecutive_gateway = 0
            return
        host.failures += 1
        host.consecutive_5xx += 1
        host.consecutive_gateway = (
            host.consecutive_gateway + 1 if outcome is Outcome.GATEWAY_ERROR else 0
        )
        self._check_streaks(host, now)

    def record_status(self, endpoint_id: str, status: int, now: float | None = None) -> None:
        """`record` for an HTTP status code (502/503/504 count as gateway errors)."""
        self.record(endpoint_id, Outcome.from_status(status), now)

    def ejected(self, now: float | None = None) -> frozenset[str]:
        """Ids ejected at `now` (default: the clock). The same object while unchanged."""
        self._advance(now)
        if self._frozen is None:
            self._frozen = frozenset(
                i for i, h in self._hosts.items() if h.ejected_until is not None
            )
        return self._frozen

    def ejection_count(self, endpoint_id: str) -> int:
        """The current ejection-time multiplier of an endpoint (0 when forgiven)."""
        host = self._hosts.get(endpoint_id)
        return host.multiplier if host else 0

    def ejected_until(self, endpoint_id: str) -> float | None:
        """When the endpoint's current ejection ends, or None if it is in service."""
        host = self._hosts.get(endpoint_id)
        return host.ejected_until if host else None

    # -- ejection -----------------------------------------------------------

    def _check_streaks(self, host: _Host, now: float) -> None:
        cfg = self._config
        if host.consecutive_5xx >= cfg.consecutive_5xx:
            host.consecutive_5xx = 0
            self._try_eject(host, cfg.enforcing_consecutive_5xx, now)
        if host.consecutive_gateway >= cfg.consecutive_gateway_failure:
            host.consecutive_gateway = 0
            self._try_eject(host, cfg.enforcing_consecutive_gateway_failure, now)

    def _room_for_one_more(self) -> bool:
        ejected = sum(1 for h in self._hosts.values() if h.ejected_until is not None)
        if ejected == 0 and self._config.always_eject_one_host:
            return True
        return (ejected + 1) * 100.0 <= self._config.max_ejection_percent * len(self._hosts)

    def _try_eject(self, host: _Host, enforcing: float, now: float) -> bool:
        if host.ejected_until is not None or enforcing <= 0:
            return False
        if self._rng.random() * 100.0 >= enforcing or not self._room_for_one_more():
            return False
        cfg = self._config
        host.multiplier = min(host.multiplier + 1, cfg.max_multiplier)
        cap = max(cfg.max_ejection_time, cfg.base_ejection_time)
        host.ejected_until = now + min(cfg.base_ejection_time * host.multiplier, cap)
        host.reset_counters()
        self._frozen = None
        self.next_change = min(self.next_change, host.ejected_until)
        return True

    # -- time ---------------------------------------------------------------

    def _advance(self, now: float | None) -> float:
        if now is None:
            now = self._clock.now()
        if now >= self.next_change:
            self._catch_up(now)
            self._expire(now)
            self._reschedule()
        return now

    def _reschedule(self) -> None:
        until = [h.ejected_until for h in self._hosts.values() if h.ejected_until is not None]
        self.next_change = min([self._next_sweep, *until])

    def _expire(self, now: float) -> None:
        for host in self._hosts.values():
            if host.ejected_until is not None and host.ejected_until <= now:
                host.unejected_at = host.ejected_until  # when it really came back
                host.ejected_until = None
                host.reset_counters()
                self._frozen = None

    def _catch_up(self, now: float) -> None:
        """Run the sweeps that fell due by `now`, in order, expiring as time passes."""
        cfg = self._config
        # After this many empty sweeps every ejection has expired and every
        # multiplier is back to 0, so more of them would change nothing.
        limit = ceil(cfg.max_ejection_time / cfg.interval) + cfg.max_multiplier + 2
        for _ in range(limit):
            if self._next_sweep > now:
                return
            self._expire(self._next_sweep)
            self._sweep(self._next_sweep)
            self._next_sweep += cfg.interval
        if self._next_sweep <= now:
            missed = (now - self._next_sweep) // cfg.interval + 1
            self._next_sweep += missed * cfg.interval

    def _sweep(self, at: float) -> None:
        interval = self._config.interval
        for host in self._hosts.values():
            if _forgivable(host, at, interval):
                host.multiplier -= 1
        self._success_rate(at)
        for host in self._hosts.values():
            host.successes = host.failures = 0

    def _success_rate(self, at: float) -> None:
        cfg = self._config
        rates = success_rates(self._hosts, cfg.success_rate_request_volume)
        if len(rates) < cfg.success_rate_minimum_hosts:
            return
        threshold = success_rate_threshold(list(rates.values()), cfg.success_rate_stdev_factor)
        # Worst first, so the ejection cap removes the worst offenders.
        for endpoint_id, rate in sorted(rates.items(), key=lambda item: item[1]):
            if rate >= threshold:
                break
            self._try_eject(self._hosts[endpoint_id], cfg.enforcing_success_rate, at)


def _forgivable(host: _Host, at: float, interval: float) -> bool:
    # Back in service for a whole interval: earn one ejection back.
    if host.ejected_until is not None or host.multiplier == 0 or host.unejected_at is None:
        return False
    return at - host.unejected_at >= interval


def success_rates(hosts: Mapping[str, _Host], volume: int) -> dict[str, float]:
    """Success rate of each in-service host with at least `volume` requests."""
    out: dict[str, float] = {}
    for endpoint_id, host in hosts.items():
        total = host.successes + host.failures
        if host.ejected_until is None and total >= volume:
            out[endpoint_id] = host.successes / total
    return out


def success_rate_threshold(rates: list[float], stdev_factor: int) -> float:
    """mean - (stdev_factor / 1000) x population standard deviation."""
    mean = sum(rates) / len(rates)
    variance = sum((r - mean) ** 2 for r in rates) / len(rates)
    return mean - stdev_factor / 1000.0 * sqrt(variance)
