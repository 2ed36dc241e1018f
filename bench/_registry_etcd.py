"""The registry bench's anchor: a private etcd's lease keepalives (LeaseKeepAlive
streams of the bare gRPC stubs) and watch latency through the same rounds."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

from bench._registry_load import (
    ETCD_LEASES,
    ETCD_SECONDS,
    ETCD_STREAMS,
    ETCD_WINDOW,
    WATCHED,
    WATCHERS,
    Latency,
    Rate,
    measured,
    registration,
)
from bench._registry_watch import Rounds
from crossway.testing.etcd import EtcdProcess, etcd_binary


async def etcd_side(etcd: EtcdProcess) -> tuple[Rate, Latency]:
    from aetcd import rpc

    channel = rpc.insecure_channel(etcd.endpoint.removeprefix("http://"))
    try:
        lease_stub, kv, watch = rpc.LeaseStub(channel), rpc.KVStub(channel), rpc.WatchStub(channel)

        async def grant(n: int) -> list[int]:
            return [
                (await lease_stub.LeaseGrant(rpc.LeaseGrantRequest(TTL=30))).ID for _ in range(n)
            ]

        chunks = await asyncio.gather(*(grant(ETCD_LEASES // 64) for _ in range(64)))
        leases = [lease for chunk in chunks for lease in chunk]
        rate = await measured(etcd.process.pid, lambda: etcd_keepalives(lease_stub, leases))
        latency = await etcd_watch_latency(kv, watch)
        return rate, latency
    finally:
        await channel.close()


async def etcd_keepalives(stub: Any, leases: list[int]) -> tuple[int, int]:
    from aetcd import rpc

    deadline = time.perf_counter() + ETCD_SECONDS
    renewed = 0

    async def stream(mine: list[int]) -> None:
        nonlocal renewed
        call = stub.LeaseKeepAlive()
        window = asyncio.Semaphore(ETCD_WINDOW)

        async def write() -> None:
            while time.perf_counter() < deadline:
                for lease in mine:
                    await window.acquire()
                    await call.write(rpc.LeaseKeepAliveRequest(ID=lease))

        writer = asyncio.ensure_future(write())
        try:
            while time.perf_counter() < deadline:
                if (await call.read()).TTL > 0:
                    renewed += 1
                window.release()
        finally:
            writer.cancel()
            call.cancel()

    await asyncio.gather(*(stream(leases[s::ETCD_STREAMS]) for s in range(ETCD_STREAMS)))
    return renewed, 0


async def etcd_watch_latency(kv: Any, stub: Any) -> Latency:
    from aetcd import rpc

    rounds = Rounds(WATCHERS // WATCHED)
    per_stream = WATCHERS // 10
    calls = [stub.Watch() for _ in range(10)]
    created = 0

    async def follow(call: Any, first: int) -> None:
        nonlocal created
        groups: dict[int, int] = {}
        for w in range(first, first + per_stream):
            prefix = f"/services/svc-{w % WATCHED}/".encode()
            create = rpc.WatchCreateRequest(key=prefix, range_end=prefix[:-1] + b"0")
            await call.write(rpc.WatchRequest(create_request=create))
        while True:
            response = await call.read()
            if response.created:
                groups[response.watch_id] = (first + len(groups)) % WATCHED
                created += 1
            for event in response.events:
                rounds.saw(groups[response.watch_id], event.kv.value, time.perf_counter())

    async def change(group: int, mark: str) -> None:
        key = f"/services/svc-{group}/instances/i-0".encode()
        await kv.Put(rpc.PutRequest(key=key, value=registration(f"svc-{group}", 0, mark)))

    followers = [asyncio.ensure_future(follow(c, i * per_stream)) for i, c in enumerate(calls)]
    try:
        while created < WATCHERS:
            await asyncio.sleep(0.05)
        rounds.latency.watchers = created
        return await rounds.run(change)
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        for call in calls:
            call.cancel()


def etcd_version() -> str:
    binary = etcd_binary() or "etcd"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return out.split("\n", 1)[0].removeprefix("etcd Version: ").strip()
