"""Endpoint factories and drivers shared by the balance tests."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable, Sequence

from crossway.balance import Balancer, Call, Endpoint
from crossway.core import VirtualClock


def endpoints(n: int, *, zone: str = "", weights: Sequence[int] | None = None) -> list[Endpoint]:
    ws = list(weights) if weights is not None else [1] * n
    prefix = f"{zone}-" if zone else ""
    return [
        Endpoint(f"{prefix}ep{i}", f"10.0.0.{i}", 8000 + i, weight=ws[i], zone=zone)
        for i in range(n)
    ]


def pick_counts(balancer: Balancer, picks: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(picks):
        chosen = balancer.pick()
        assert chosen is not None
        counts[chosen.id] += 1
    return counts


def key_owners(balancer: Balancer, keys: Sequence[str]) -> dict[str, str]:
    owners = {}
    for key in keys:
        chosen = balancer.pick(key)
        assert chosen is not None
        owners[key] = chosen.id
    return owners


def moved_fraction(before: dict[str, str], after: dict[str, str]) -> float:
    return sum(before[k] != after[k] for k in before) / len(before)


def simulate(
    balancer: Balancer,
    clock: VirtualClock,
    rtt_of: Callable[[str, int], float],
    *,
    requests: int,
    gap: float,
    seed: int = 7,
) -> list[str]:
    """Open-loop traffic on virtual time: a request every `gap` seconds, each
    taking rtt_of(endpoint id, request number) (+-20% jitter). Returns the
    endpoint id chosen for each request, in order."""
    rnd = random.Random(seed)
    in_flight: list[tuple[float, int, Call]] = []
    chosen: list[str] = []
    now = 0.0
    for n in range(requests):
        now += gap
        while in_flight and in_flight[0][0] <= now:
            end, _, call = heapq.heappop(in_flight)
            clock.set(end)
            call.end()
        clock.set(now)
        endpoint = balancer.pick()
        assert endpoint is not None
        call = balancer.begin(endpoint)
        rtt = rtt_of(endpoint.id, n) * rnd.uniform(0.8, 1.2)
        heapq.heappush(in_flight, (now + rtt, n, call))
        chosen.append(endpoint.id)
    return chosen
