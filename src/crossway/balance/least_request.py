"""Power-of-two-choices balancers: least request and peak EWMA.

Theory of operation
-------------------
Both sample two distinct active endpoints at random and send the request to
the one with the lower load ("the power of two choices", Mitzenmacher): almost
as good as scanning every endpoint for the least loaded, at O(1), and with no
herd behaviour when many clients hold stale load views, because each pick
only ever compares two.

Sampling is proportional to `Endpoint.weight`, and load is compared per unit
of weight, so at light load traffic follows the weights and under heavy load a
heavier endpoint is allowed proportionally more requests in flight.

- `LeastRequest` (Envoy's LEAST_REQUEST, choice_count 2): load = requests
  in flight (`begin` ... `end`).
- `PeakEwma` (Finagle's and Linkerd's default): load = rtt_estimate x
  (pending + 1). The RTT estimate is *peak-sensitive*: a sample above the
  estimate replaces it at once; a lower one is blended in with weight
  1 - exp(-dt / tau), dt being the time since the previous update, tau 10 s.
  Between samples the estimate decays toward zero with the same tau, so an
  endpoint that was slow but has not been tried for a while becomes cheap
  again and gets probed. A new endpoint starts at `default_rtt` (30 ms, as in
  Linkerd). A failed call never lowers the estimate: a fast error is not
  evidence of a fast endpoint (outlier ejection is what removes those).

Invariants
----------
- Load objects are keyed on endpoint id and survive `update` for endpoints
  that stay; a call started before an endpoint left ends harmlessly on the
  detached load object.
- `pending` is the number of begun-but-not-ended calls; `Call.end` is
  idempotent, so it never goes negative.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from math import exp

from crossway.balance._pool import DEFAULT_PANIC_THRESHOLD, PoolBase
from crossway.balance.endpoint import NO_CALL, Call, Endpoint
from crossway.core.clock import Clock, SystemClock
from crossway.core.errors import InvalidArgument


class _Pending:
    """Requests in flight to one endpoint."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = 0

    def finish(self, start: float, now: float | None, ok: bool) -> None:
        self.pending -= 1

    def load(self, now: float) -> float:
        return float(self.pending)


class _PeakEwma(_Pending):
    """Pending count plus a peak-sensitive, decaying RTT estimate."""

    __slots__ = ("_clock", "_tau", "estimate", "stamp")

    def __init__(self, clock: Clock, tau: float, initial: float) -> None:
        super().__init__()
        self._clock = clock
        self._tau = tau
        self.estimate = initial
        self.stamp = clock.now()

    def _decayed(self, now: float) -> float:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.estimate *= exp(-elapsed / self._tau)
            self.stamp = now
        return self.estimate

    def load(self, now: float) -> float:
        # `_decayed` inline (and no max() calls below): run twice per pick.
        elapsed = now - self.stamp
        if elapsed > 0:
            self.estimate *= exp(-elapsed / self._tau)
            self.stamp = now
        return self.estimate * (self.pending + 1)

    def finish(self, start: float, now: float | None, ok: bool) -> None:
        self.pending -= 1
        if now is None:
            now = self._clock.now()
        rtt = now - start
        self.observe(rtt if rtt > 0.0 else 0.0, now, ok)

    def observe(self, rtt: float, now: float, ok: bool = True) -> None:
        if rtt > self.estimate:
            self.estimate = rtt
        elif ok:
            elapsed = now - self.stamp
            w = exp(-elapsed / self._tau) if elapsed > 0.0 else 1.0
            self.estimate = self.estimate * w + rtt * (1.0 - w)
        if now > self.stamp:
            self.stamp = now


class _TwoChoices(PoolBase):
    """P2C over per-endpoint load objects; subclasses say how load is made."""

    __slots__ = ("_by_id", "_cumulative", "_loads", "_rng", "_total", "_uniform", "_weights")

    def __init__(self, *, healthy_panic_threshold: float, rng: random.Random | None) -> None:
        super().__init__(healthy_panic_threshold=healthy_panic_threshold)
        self._rng = rng or random.Random()
        self._by_id: dict[str, _Pending] = {}
        self._loads: list[_Pending] = []
        self._weights: list[int] = []
        self._cumulative: list[int] = []
        self._total = 0
        self._uniform = True

    def _new_load(self) -> _Pending:
        raise NotImplementedError

    def _now(self) -> float:
        return 0.0

    def _sync(self, members: tuple[Endpoint, ...]) -> None:
        old = self._by_id
        self._by_id = {e.id: old.get(e.id) or self._new_load() for e in members}

    def _rebuild(self, active: tuple[Endpoint, ...]) -> None:
        self._loads = [self._by_id[e.id] for e in active]
        self._weights = [e.weight for e in active]
        self._cumulative = []
        running = 0
        for w in self._weights:
            running += w
            self._cumulative.append(running)
        self._total = running
        self._uniform = len(set(self._weights)) <= 1

    def _two(self) -> tuple[int, int]:
        """Two distinct indices, sampled in proportion to weight."""
        r = self._rng.random
        n = len(self._loads)
        if self._uniform:
            i = int(r() * n)
            j = int(r() * (n - 1))
            return i, (j + 1 if j >= i else j)
        cum = self._cumulative
        # hi=n-1 clamps a draw that float rounding pushed onto the total itself.
        i = bisect_right(cum, r() * self._total, 0, n - 1)
        # Draw the second from the total minus i's share, skipping i's interval.
        w_i = self._weights[i]
        u = r() * (self._total - w_i)
        if u >= cum[i] - w_i:
            u += w_i
        return i, bisect_right(cum, u, 0, n - 1)

    def pick(self, key: bytes | str | None = None) -> Endpoint | None:
        """The less loaded of two random active endpoints (None if there are none)."""
        active = self._active
        if len(active) < 2:
            return active[0] if active else None
        i, j = self._two()
        now = self._now()
        load_i = self._loads[i].load(now)
        load_j = self._loads[j].load(now)
        if not self._uniform:  # compare load per unit of weight, without dividing
            weights = self._weights
            load_i, load_j = load_i * weights[j], load_j * weights[i]
        return active[j] if load_j < load_i else active[i]

    def begin(self, endpoint: Endpoint, now: float | None = None) -> Call:
        """Count a request to `endpoint` as in flight until the call ends.

        An endpoint that is not a member gets the inert `NO_CALL`.
        """
        load = self._by_id.get(endpoint.id)
        if load is None:
            return NO_CALL
        load.pending += 1
        return Call(load, self._now() if now is None else now)

    def pending(self, endpoint_id: str) -> int:
        """Requests in flight to this member (0 for unknown ids)."""
        load = self._by_id.get(endpoint_id)
        return load.pending if load else 0


class LeastRequest(_TwoChoices):
    """Power of two choices on requests in flight (Envoy LEAST_REQUEST)."""

    __slots__ = ()

    def __init__(
        self,
        *,
        healthy_panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(healthy_panic_threshold=healthy_panic_threshold, rng=rng)

    def _new_load(self) -> _Pending:
        return _Pending()


class PeakEwma(_TwoChoices):
    """Power of two choices on rtt_estimate x (pending + 1) (Finagle, Linkerd)."""

    __slots__ = ("_clock", "_default_rtt", "_tau")

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        decay: float = 10.0,
        default_rtt: float = 0.030,
        healthy_panic_threshold: float = DEFAULT_PANIC_THRESHOLD,
        rng: random.Random | None = None,
    ) -> None:
        if decay <= 0 or default_rtt < 0:
            raise InvalidArgument("decay must be > 0 and default_rtt >= 0 (seconds)")
        self._clock: Clock = clock or SystemClock()
        self._tau = float(decay)
        self._default_rtt = float(default_rtt)
        super().__init__(healthy_panic_threshold=healthy_panic_threshold, rng=rng)

    def _new_load(self) -> _Pending:
        return _PeakEwma(self._clock, self._tau, self._default_rtt)

    def _now(self) -> float:
        return self._clock.now()

    def rtt_estimate(self, endpoint_id: str, now: float | None = None) -> float | None:
        """The decayed RTT estimate of a member, in seconds (None if unknown)."""
        load = self._by_id.get(endpoint_id)
        if not isinstance(load, _PeakEwma):
            return None
        return load._decayed(self._clock.now() if now is None else now)
