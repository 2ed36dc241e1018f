"""Store write throughput and watch delivery latency: sqlite beside a local etcd.

Both backends run on this machine in one run, through the same `Store` calls:
the sqlite backend on a file in a temporary directory (WAL, synchronous=FULL),
and our etcd backend against a private single-node etcd started here (normal
fsync, data directory on the same file system).

Write modes, each a fixed count of puts with a time cap, run three times with
the backends interleaved, best run kept (the machine is shared and noisy):
  (a) single puts, one after another (one fsync per put on both sides);
  (b) transactions of 100 puts (`txn([], [Put] * 100)`), one after another;
  (c) 64 concurrent writers of single puts (sqlite's group commit, etcd's
      raft batching).
For etcd the client's own cost is shown two ways: this process's CPU per put
(etcd runs in another process, so this is all client, gRPC's own threads
included), beside the etcd server's CPU per put read from /proc; and puts
through the bare generated gRPC stub, without the crossway layer.

Watch delivery: 1, then 100 watchers on one key; for each of a fixed number of
rounds the clock starts just before `put()` is called and stops in each watcher
as it receives the event; the next round starts when every watcher has it.
p50/p99 over every (round, watcher) pair. The single watcher shows the
backend's own delay; with 100, the work of fanning one event out to 100
consumers in this process joins it (for etcd: 100 gRPC streams to decode).

Targets: sqlite's batched puts >= 2x etcd's puts/s; sqlite's watch p99 <= etcd's.
Every ratio is printed whether met or not. Numbers, not a test: nothing fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aetcd import rpc

from crossway.store import Put, Store, Watch
from crossway.store.etcd import open_etcd_store
from crossway.store.sqlite import open_sqlite_store
from crossway.testing.etcd import etcd_binary, start_etcd

SINGLE_PUTS = 1_000
BATCHES, BATCH = 60, 100
WRITERS, PUTS_PER_WRITER = 64, 60
WATCHER_COUNTS, ROUNDS = (1, 100), 200
REPEATS = 3
CAP_SECONDS = 5.0  # per measurement: the whole file stays well under two minutes
ROUND_TIMEOUT = 2.0
VALUE = b"x" * 64


@dataclass
class Rate:
    puts: int
    seconds: float
    client_cpu: float
    server_cpu: float | None = None

    @property
    def per_second(self) -> float:
        return self.puts / self.seconds if self.seconds else 0.0

    def cpu_us(self, seconds: float | None) -> str:
        return "-" if seconds is None or not self.puts else f"{seconds / self.puts * 1e6:.0f}"


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    samples: int
    missed: int


# Measurements


def _process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by process `pid`, from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _timed(work: Callable[[float], Awaitable[int]], server: int | None) -> Rate:
    """Run `work(deadline)` (which returns puts done) and measure it."""
    cpu0, server0 = time.process_time(), _process_cpu(server)
    start = time.perf_counter()
    puts = await work(start + CAP_SECONDS)
    seconds = time.perf_counter() - start
    server1 = _process_cpu(server)
    server_cpu = None if server0 is None or server1 is None else server1 - server0
    return Rate(puts, seconds, time.process_time() - cpu0, server_cpu)


def _single(
    put: Callable[[str], Awaitable[object]], prefix: str
) -> Callable[[float], Awaitable[int]]:
    async def work(deadline: float) -> int:
        for i in range(SINGLE_PUTS):
            await put(f"{prefix}{i}")
            if time.perf_counter() > deadline:
                return i + 1
        return SINGLE_PUTS

    return work


def _batched(store: Store, prefix: str) -> Callable[[float], Awaitable[int]]:
    async def work(deadline: float) -> int:
        for b in range(BATCHES):
            await store.txn([], [Put(f"{prefix}{b}/{i}", VALUE) for i in range(BATCH)])
            if time.perf_counter() > deadline:
                return (b + 1) * BATCH
        return BATCHES * BATCH

    return work


def _concurrent(
    put: Callable[[str], Awaitable[object]], prefix: str
) -> Callable[[float], Awaitable[int]]:
    async def writer(w: int, deadline: float) -> int:
        for i in range(PUTS_PER_WRITER):
            await put(f"{prefix}{w}/{i}")
            if time.perf_counter() > deadline:
                return i + 1
        return PUTS_PER_WRITER

    async def work(deadline: float) -> int:
        return sum(await asyncio.gather(*(writer(w, deadline) for w in range(WRITERS))))

    return work


async def _writes(store: Store, server: int | None, run: int) -> dict[str, Rate]:
    async def put(key: str) -> object:
        return await store.put(key, VALUE)

    return {
        "a": await _timed(_single(put, f"/bench/{run}/a/"), server),
        "b": await _timed(_batched(store, f"/bench/{run}/b/"), server),
        "c": await _timed(_concurrent(put, f"/bench/{run}/c/"), server),
    }


async def _bare_writes(stub: Any, server: int | None, run: int) -> dict[str, Rate]:
    """Puts through the bare generated stub: etcd's cost plus gRPC's, nothing of ours."""

    async def put(key: str) -> object:
        return await stub.Put(rpc.PutRequest(key=key.encode(), value=VALUE))

    return {
        "a": await _timed(_single(put, f"/bare/{run}/a/"), server),
        "c": await _timed(_concurrent(put, f"/bare/{run}/c/"), server),
    }


def _keep_best(best: dict[str, Rate], new: dict[str, Rate]) -> None:
    for mode, rate in new.items():
        if mode not in best or rate.per_second > best[mode].per_second:
            best[mode] = rate


async def _watch_latency(store: Store, watchers: int) -> Latency:
    key = f"/bench/watched/{watchers}"
    start = await store.revision()
    watches = [store.watch(key, after_revision=start) for _ in range(watchers)]
    sent: dict[bytes, float] = {}
    samples: list[float] = []
    arrived: dict[bytes, int] = {}
    everyone = asyncio.Event()

    async def follow(watch: Watch) -> None:
        async for event in watch:
            samples.append(time.perf_counter() - sent[event.kv.value])
            arrived[event.kv.value] = arrived.get(event.kv.value, 0) + 1
            if arrived[event.kv.value] == watchers:
                everyone.set()

    followers = [asyncio.ensure_future(follow(w)) for w in watches]
    await asyncio.sleep(0.5)  # let every watch register before the clock runs
    try:
        missed = await _rounds(store, key, sent, everyone)
    finally:
        for w in watches:
            await w.aclose()
        await asyncio.gather(*followers, return_exceptions=True)
    return Latency(_quantile(samples, 0.50), _quantile(samples, 0.99), len(samples), missed)


def _quantile(samples: list[float], q: float) -> float:
    """The q-quantile of `samples`, in milliseconds (nearest rank)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _rounds(store: Store, key: str, sent: dict[bytes, float], everyone: asyncio.Event) -> int:
    missed = 0
    deadline = time.perf_counter() + CAP_SECONDS
    for i in range(ROUNDS):
        value = str(i).encode()
        everyone.clear()
        sent[value] = time.perf_counter()
        await store.put(key, value)
        try:
            await asyncio.wait_for(everyone.wait(), ROUND_TIMEOUT)
        except TimeoutError:
            missed += 1
        if time.perf_counter() > deadline:
            break
    return missed


# The run


@dataclass
class Side:
    writes: dict[str, Rate] = field(default_factory=dict)
    latency: dict[int, Latency] = field(default_factory=dict)
    bare: dict[str, Rate] = field(default_factory=dict)


async def _run() -> None:
    print(f"sqlite file and etcd data dir under {tempfile.gettempdir()}; {os.cpu_count()} CPUs")
    print(f"write rates: best of {REPEATS} interleaved runs (the machine is shared)")
    async with contextlib.AsyncExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="crossway-bench-"))
        sqlite_store = await open_sqlite_store(Path(tmp) / "store.db")
        stack.push_async_callback(sqlite_store.close)
        if etcd_binary() is None:
            print("etcd is not installed (scripts/ensure-etcd): sqlite only")
            _print_rates(Side(writes=await _writes(sqlite_store, None, 0)), None)
            return
        server = await asyncio.to_thread(start_etcd)
        stack.callback(server.stop)
        etcd_store = await open_etcd_store([server.endpoint])
        stack.push_async_callback(etcd_store.close)
        channel = rpc.insecure_channel(server.endpoint.removeprefix("http://"))
        stack.push_async_callback(channel.close)
        sqlite, etcd = await _compare(
            sqlite_store, etcd_store, rpc.KVStub(channel), server.process.pid
        )
    _print_rates(sqlite, etcd)
    _print_cpu(sqlite, etcd)
    _print_latency(sqlite, etcd)
    _print_targets(sqlite, etcd)


async def _compare(
    sqlite_store: Store, etcd_store: Store, stub: Any, pid: int
) -> tuple[Side, Side]:
    sqlite, etcd = Side(), Side()
    for run in range(REPEATS):
        _keep_best(sqlite.writes, await _writes(sqlite_store, None, run))
        _keep_best(etcd.writes, await _writes(etcd_store, pid, run))
        _keep_best(etcd.bare, await _bare_writes(stub, pid, run))
    for watchers in WATCHER_COUNTS:
        sqlite.latency[watchers] = await _watch_latency(sqlite_store, watchers)
        etcd.latency[watchers] = await _watch_latency(etcd_store, watchers)
    return sqlite, etcd


# Output

MODES = {
    "a": "(a) single puts in sequence",
    "b": f"(b) txn of {BATCH} puts (keys/s)",
    "c": f"(c) {WRITERS} concurrent writers",
}


def _print_rates(sqlite: Side, etcd: Side | None) -> None:
    print(f"\n{'puts/s':<34}{'sqlite':>10}{'etcd':>10}{'sqlite/etcd':>13}")
    for mode, label in MODES.items():
        mine = sqlite.writes[mode].per_second
        theirs = etcd.writes[mode].per_second if etcd else 0.0
        ratio = f"{mine / theirs:.2f}x" if theirs else "-"
        print(f"{label:<34}{mine:>10,.0f}{theirs:>10,.0f}{ratio:>13}")


def _print_cpu(sqlite: Side, etcd: Side) -> None:
    print(f"\n{'CPU µs per put':<34}{'sqlite':>10}{'etcd cli':>10}{'etcd srv':>10}")
    for mode, label in MODES.items():
        s, e = sqlite.writes[mode], etcd.writes[mode]
        print(
            f"{label:<34}{s.cpu_us(s.client_cpu):>10}{e.cpu_us(e.client_cpu):>10}"
            f"{e.cpu_us(e.server_cpu):>10}"
        )
    print("\nclient overhead: our etcd backend vs bare gRPC stub puts (same etcd)")
    for mode in ("a", "c"):
        ours, bare = etcd.writes[mode], etcd.bare[mode]
        print(
            f"  {MODES[mode]:<32} ours {ours.per_second:>7,.0f}/s  bare {bare.per_second:>7,.0f}/s"
            f"  ({ours.per_second / bare.per_second:.2f}x); client CPU µs/put: ours "
            f"{ours.cpu_us(ours.client_cpu)}, bare {bare.cpu_us(bare.client_cpu)}"
        )


def _print_latency(sqlite: Side, etcd: Side) -> None:
    print("\nwatch delivery: put() called -> event received, per watcher")
    print(f"{'':<22}{'p50 ms':>10}{'p99 ms':>10}{'samples':>10}{'missed':>8}")
    for watchers in WATCHER_COUNTS:
        for name, side in (("sqlite", sqlite), ("etcd", etcd)):
            lat = side.latency[watchers]
            label = f"{name}, {watchers} watcher(s)"
            print(
                f"{label:<22}{lat.p50_ms:>10.2f}{lat.p99_ms:>10.2f}{lat.samples:>10}{lat.missed:>8}"
            )


def _print_targets(sqlite: Side, etcd: Side) -> None:
    batched = sqlite.writes["b"].per_second
    print("\ntargets")
    for mode in ("a", "c", "b"):
        other = etcd.writes[mode].per_second
        ratio = batched / other if other else float("inf")
        verdict = "met" if ratio >= 2 else "NOT met"
        print(f"  sqlite (b) >= 2x etcd {MODES[mode][:3]}: {ratio:.2f}x  {verdict}")
    for watchers in WATCHER_COUNTS:
        s99, e99 = sqlite.latency[watchers].p99_ms, etcd.latency[watchers].p99_ms
        verdict = "met" if s99 <= e99 else "NOT met"
        print(
            f"  watch p99 sqlite <= etcd, {watchers:>3} watcher(s): "
            f"{s99:.2f} vs {e99:.2f} ms ({s99 / e99:.2f}x)  {verdict}"
        )


def main() -> None:
    asyncio.run(_run())


if __name__ == "__main__":
    main()
