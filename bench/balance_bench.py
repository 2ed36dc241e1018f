"""Picks per second of each balancer over 100 endpoints, and rebuild cost.

There is no Python peer library worth measuring against, so the reference is
the floor any balancer must pay: `random.choice` over a list. Each row is
timed for a fixed, small number of picks (the whole file runs in a few
seconds); load-aware balancers are also timed with their `begin`/`end`
bookkeeping, which is what a proxy pays per request.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from crossway.balance import (
    Balancer,
    Endpoint,
    LeastRequest,
    Maglev,
    PeakEwma,
    RingHash,
    RoundRobin,
    SmoothWeighted,
    ZoneAware,
)

ENDPOINTS = [
    Endpoint(f"ep{i}", f"10.0.{i // 250}.{i % 250}", 8080, weight=1 + i % 4, zone=f"z{i % 3}")
    for i in range(100)
]
PICKS = 100_000
KEYS = [f"user-{i}".encode() for i in range(PICKS)]


def rate(fn: Callable[[], object], n: int = PICKS) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def keyed_rate(lb: Balancer) -> float:
    pick = lb.pick
    start = time.perf_counter()
    for key in KEYS:
        pick(key)
    return len(KEYS) / (time.perf_counter() - start)


def tracked_rate(lb: Balancer) -> float:
    def one() -> None:
        chosen = lb.pick()
        assert chosen is not None
        lb.begin(chosen).end()

    return rate(one, PICKS // 2)


def rebuild_ms(make: Callable[[], Balancer]) -> float:
    lb = make()
    lb.update(ENDPOINTS)
    start = time.perf_counter()
    lb.set_ejected({"ep7"})
    return (time.perf_counter() - start) * 1000


BALANCERS: list[tuple[str, Callable[[], Balancer], bool, bool]] = [
    # name, factory, keyed, load-aware
    ("RoundRobin", RoundRobin, False, False),
    ("SmoothWeighted", SmoothWeighted, False, False),
    ("LeastRequest (P2C)", LeastRequest, False, True),
    ("PeakEwma (P2C)", PeakEwma, False, True),
    ("RingHash", RingHash, True, False),
    ("Maglev", Maglev, True, False),
    ("ZoneAware(PeakEwma)", lambda: ZoneAware(local_zone="z0", inner=PeakEwma), False, True),
]


def main() -> None:
    choices = list(ENDPOINTS)
    floor = rate(lambda: random.choice(choices))
    print(f"{len(ENDPOINTS)} endpoints, weights 1-4, 3 zones; reference random.choice:")
    print(f"  {'random.choice':24} {floor:>12,.0f} picks/s")
    header = f"{'balancer':24} {'picks/s':>12} {'vs choice':>9} {'keyed/s':>12} "
    print(header + f"{'pick+begin+end/s':>17} {'rebuild ms':>11}")
    for name, make, keyed, tracked in BALANCERS:
        lb = make()
        lb.update(ENDPOINTS)
        picks = rate(lb.pick)
        keyed_col = f"{keyed_rate(lb):>12,.0f}" if keyed else f"{'-':>12}"
        tracked_col = f"{tracked_rate(lb):>17,.0f}" if tracked else f"{'-':>17}"
        print(
            f"{name:24} {picks:>12,.0f} {picks / floor:>8.2f}x {keyed_col} {tracked_col} "
            f"{rebuild_ms(make):>11.1f}"
        )


if __name__ == "__main__":
    main()
