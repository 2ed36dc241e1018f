"""Balancing and outlier ejection on simulated traffic (virtual time, no network).

Run:  .venv/bin/python examples/balance_example.py

Nine endpoints in three zones. One starts answering slowly, another starts
failing. Peak-EWMA steers around the slow one, outlier detection ejects the
failing one, and zone-aware routing keeps traffic in zone "a" until zone "a"
loses capacity. Finally Maglev shows that keys stay put when an endpoint
leaves.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter

from crossway.balance import (
    Call,
    Endpoint,
    Maglev,
    OutlierConfig,
    OutlierDetector,
    PeakEwma,
    ZoneAware,
)
from crossway.core import VirtualClock

clock = VirtualClock()
endpoints = [
    Endpoint(f"{zone}{i}", f"10.0.{n}.{i}", 8080, zone=zone)
    for n, zone in enumerate("abc")
    for i in range(3)
]


def upstream(endpoint: Endpoint, now: float) -> tuple[float, int]:
    """(latency, status) of the simulated service: a1 turns slow, a2 turns bad."""
    if endpoint.id == "a1" and now > 20:
        return 0.300, 200
    if endpoint.id == "a2" and now > 40:
        return 0.005, 503
    return 0.010, 200


# Requests on the wire: (completion time, sequence, call, endpoint id, status).
# Kept across runs: a call must always be ended, or its endpoint looks busy forever.
in_flight: list[tuple[float, int, Call, str, int]] = []
sequence = itertools.count()


def run(seconds: float, rps: int = 500) -> Counter[str]:
    """Open-loop traffic through the pipeline a proxy would run per request."""
    served: Counter[str] = Counter()
    for _ in range(int(seconds * rps)):
        now = clock.now() + 1 / rps
        while in_flight and in_flight[0][0] <= now:
            done, _, call, endpoint_id, status = heapq.heappop(in_flight)
            clock.set(done)
            call.end(ok=status < 500)
            detector.record_status(endpoint_id, status)
        clock.set(now)
        balancer.set_ejected(detector.ejected())  # O(1) unless something changed
        endpoint = balancer.pick()
        if endpoint is None:
            continue
        call = balancer.begin(endpoint)
        latency, status = upstream(endpoint, now)
        heapq.heappush(in_flight, (now + latency, next(sequence), call, endpoint.id, status))
        served[endpoint.id] += 1
    return served


def share(counts: Counter[str]) -> str:
    total = sum(counts.values())
    return " ".join(f"{e.id}={100 * counts[e.id] / total:4.1f}%" for e in endpoints)


# 10% of nine endpoints is less than one: allow ejecting one anyway.
detector = OutlierDetector(
    OutlierConfig(always_eject_one_host=True), clock=clock, rng=random.Random(1)
)
detector.update(endpoints)
balancer = ZoneAware(
    local_zone="a",
    inner=lambda: PeakEwma(clock=clock, rng=random.Random(2)),
    rng=random.Random(3),
)
balancer.update(endpoints)

print("all healthy       ", share(run(20)))
print("a1 slow           ", share(run(20)))
print("a2 turns bad      ", share(run(1)))
print("a2 ejected        ", share(run(19)), "ejected:", sorted(detector.ejected()))
print(f"zone a keeps {100 * balancer.local_fraction:.0f}% of traffic, spills the rest to b and c")

maglev = Maglev()
maglev.update(endpoints)
keys = [f"cart-{i}" for i in range(10_000)]
before = {k: maglev.pick(k) for k in keys}
maglev.update([e for e in endpoints if e.id != "b0"])
moved = sum(before[k] != maglev.pick(k) for k in keys) / len(keys)
print(f"maglev: b0 left, {100 * moved:.1f}% of keys moved (ideal {100 / len(endpoints):.1f}%)")
