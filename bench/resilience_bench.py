"""Per-call overhead of Crossway's breakers and retries beside the real peers.

Success path only: the protected function returns a constant at once, so what
is measured is the wrapper. Each row is timed with time.perf_counter_ns over a
calibrated batch (about a fifth of a second, at most a few hundred thousand
calls), best of several rounds; rows take turns inside each round so that load
from elsewhere on the machine hits them alike. Overhead = row - bare call.

Peers use the same semantics as ours: a consecutive-failure breaker with
fail_max 5 / reset 60 s (pybreaker, circuitbreaker sync; aiobreaker,
purgatory async), and a retry of up to 3 attempts that succeeds on the first
(tenacity). Ratios are peer overhead / our overhead: above 1 means we are
cheaper. Targets were set on this machine when pybreaker cost about 0.86 µs;
the "normalised" column scales our absolute numbers by how much slower
pybreaker is today, so a loaded machine does not read as a regression.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import time
from collections.abc import Awaitable, Callable

import aiobreaker
import circuitbreaker
import purgatory
import pybreaker
import tenacity

from crossway.resilience.breaker import CircuitBreaker
from crossway.resilience.consecutive import ConsecutiveBreaker
from crossway.resilience.retry import retry

ROUNDS = 7
BATCH_NS = 200_000_000
MAX_BATCH = 300_000
PYBREAKER_REFERENCE_NS = 860.0

Sync = Callable[[], object]
Async = Callable[[], Awaitable[object]]


def _batch_size(per_call_ns: float) -> int:
    return max(2_000, min(MAX_BATCH, int(BATCH_NS / max(per_call_ns, 1.0))))


def _run_sync(fn: Sync, n: int) -> int:
    began = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return time.perf_counter_ns() - began


async def _run_async(fn: Async, n: int) -> int:
    began = time.perf_counter_ns()
    for _ in range(n):
        await fn()
    return time.perf_counter_ns() - began


def measure_sync(rows: dict[str, Sync]) -> dict[str, float]:
    """Best ns per call of each row, rows interleaved within each round."""
    sizes = {name: _batch_size(_run_sync(fn, 1000) / 1000) for name, fn in rows.items()}
    best = dict.fromkeys(rows, math.inf)
    for _ in range(ROUNDS):
        for name, fn in rows.items():
            best[name] = min(best[name], _run_sync(fn, sizes[name]) / sizes[name])
    return best


async def measure_async(rows: dict[str, Async]) -> dict[str, float]:
    sizes = {}
    for name, fn in rows.items():
        sizes[name] = _batch_size(await _run_async(fn, 1000) / 1000)
    best = dict.fromkeys(rows, math.inf)
    for _ in range(ROUNDS):
        for name, fn in rows.items():
            best[name] = min(best[name], await _run_async(fn, sizes[name]) / sizes[name])
    return best


# -- the rows ----------------------------------------------------------------------------


def _answer() -> int:
    return 42


async def _answer_async() -> int:
    return 42


def sync_breakers() -> dict[str, Sync]:
    pyb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    return {
        "bare call": _answer,
        "crossway ConsecutiveBreaker": ConsecutiveBreaker(fail_max=5, reset_timeout=60)(_answer),
        "pybreaker": pyb(_answer),
        "circuitbreaker": circuitbreaker.circuit(failure_threshold=5, recovery_timeout=60)(_answer),
        "crossway CircuitBreaker (window)": CircuitBreaker("bench")(_answer),
    }


def async_breakers() -> dict[str, Async]:
    aio = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=datetime.timedelta(seconds=60))
    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)
    return {
        "bare await": _answer_async,
        "crossway ConsecutiveBreaker": ConsecutiveBreaker(fail_max=5, reset_timeout=60)(
            _answer_async
        ),
        "aiobreaker": aio(_answer_async),
        "purgatory": factory("bench")(_answer_async),
        "crossway CircuitBreaker (window)": CircuitBreaker("bench")(_answer_async),
    }


def sync_retries() -> dict[str, Sync]:
    return {
        "bare call": _answer,
        "crossway retry": retry(max_attempts=3)(_answer),
        "tenacity": tenacity.retry(stop=tenacity.stop_after_attempt(3))(_answer),
    }


def async_retries() -> dict[str, Async]:
    return {
        "bare await": _answer_async,
        "crossway retry": retry(max_attempts=3)(_answer_async),
        "tenacity": tenacity.retry(stop=tenacity.stop_after_attempt(3))(_answer_async),
    }


# -- report ----------------------------------------------------------------------------------


def _table(title: str, times: dict[str, float], ours: str) -> dict[str, float]:
    """Print one group; return overhead (ns) per row."""
    bare_name = next(iter(times))
    bare = times[bare_name]
    overhead = {name: max(t - bare, 0.001) for name, t in times.items() if name != bare_name}
    print(f"\n{title}")
    print(f"  {'implementation':34} {'ns/call':>9} {'overhead ns':>12} {'vs ours':>9}")
    print(f"  {bare_name:34} {bare:9.0f} {'':>12} {'':>9}")
    for name, extra in overhead.items():
        ratio = extra / overhead[ours]
        print(f"  {name:34} {times[name]:9.0f} {extra:12.0f} {ratio:8.2f}x")
    return overhead


def _verdict(label: str, value: float, target: str, met: bool) -> None:
    print(f"  {label:58} {value:8.2f}  target {target:8} {'met' if met else 'MISSED'}")


def main() -> None:
    ours = "crossway ConsecutiveBreaker"
    sb = _table("breakers, sync (fail_max=5)", measure_sync(sync_breakers()), ours)
    ab = _table("breakers, async (fail_max=5)", asyncio.run(measure_async(async_breakers())), ours)
    sr = _table(
        "retry, sync (3 attempts, succeeds at once)", measure_sync(sync_retries()), "crossway retry"
    )
    ar = _table(
        "retry, async (3 attempts, succeeds at once)",
        asyncio.run(measure_async(async_retries())),
        "crossway retry",
    )
    slowdown = sb["pybreaker"] / PYBREAKER_REFERENCE_NS
    window = sb["crossway CircuitBreaker (window)"]
    print(f"\nratios (peer overhead / ours); machine is {slowdown:.2f}x the reference speed")
    _verdict(
        "pybreaker / ConsecutiveBreaker (sync)",
        sb["pybreaker"] / sb[ours],
        ">= 2",
        sb["pybreaker"] >= 2 * sb[ours],
    )
    _verdict(
        "circuitbreaker / ConsecutiveBreaker (sync)",
        sb["circuitbreaker"] / sb[ours],
        ">= 1",
        sb["circuitbreaker"] >= sb[ours],
    )
    _verdict(
        "aiobreaker / ConsecutiveBreaker (async)",
        ab["aiobreaker"] / ab[ours],
        "> 1",
        ab["aiobreaker"] > ab[ours],
    )
    _verdict(
        "purgatory / ConsecutiveBreaker (async)",
        ab["purgatory"] / ab[ours],
        "> 1",
        ab["purgatory"] > ab[ours],
    )
    _verdict(
        "tenacity / crossway retry (sync)",
        sr["tenacity"] / sr["crossway retry"],
        ">= 3",
        sr["tenacity"] >= 3 * sr["crossway retry"],
    )
    _verdict(
        "tenacity / crossway retry (async)",
        ar["tenacity"] / ar["crossway retry"],
        ">= 3",
        ar["tenacity"] >= 3 * ar["crossway retry"],
    )
    _verdict("window breaker overhead, µs (as measured)", window / 1000, "<= 1", window <= 1000)
    _verdict(
        "window breaker overhead, µs (normalised to reference)",
        window / slowdown / 1000,
        "<= 1",
        window / slowdown <= 1000,
    )
    _limiter_comparison()


def _limiter_comparison() -> None:
    """The rate-limiter table, when bench/limiter_bench.py is there."""
    try:
        from bench import limiter_bench
    except ImportError:
        return
    run = getattr(limiter_bench, "main", None)
    if callable(run):
        print("\n--- limiter comparison (bench/limiter_bench.py) ---")
        run()


if __name__ == "__main__":
    main()
