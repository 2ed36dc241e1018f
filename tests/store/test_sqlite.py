"""What only the sqlite backend promises: durability across restarts and
crashes, leases re-armed after a restart, and no acknowledged write lost when
the disk fails."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crossway.core.clock import VirtualClock
from crossway.store import EventType, StoreUnavailable
from crossway.store.persist import Record
from crossway.store.sqlite import SQLitePersister, open_sqlite_store


async def test_state_history_and_revision_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await open_sqlite_store(path)
    for i in range(5):
        await store.put(f"/k/{i}", str(i).encode())
    await store.delete("/k/0")
    revision = await store.revision()
    await store.close()

    store = await open_sqlite_store(path)
    assert await store.revision() == revision
    assert [kv.key for kv in (await store.range("/k/")).kvs] == [f"/k/{i}" for i in range(1, 5)]
    watch = store.watch("/k/", after_revision=2)  # history read back from disk
    events = [await watch.__anext__() for _ in range(4)]
    assert [e.kv.value for e in events[:3]] == [b"2", b"3", b"4"]
    assert events[3].type is EventType.DELETE
    assert events[3].kv.key == "/k/0"
    await watch.aclose()
    assert (await store.put("/k/9", b"9")).revision == revision + 1
    await store.close()


async def test_leases_are_rearmed_after_a_restart_not_expired(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    clock = VirtualClock()
    store = await open_sqlite_store(path, clock=clock)
    lease = await store.grant(10)
    await store.put("/svc/a", b"x", lease=lease.id)
    clock.advance(9)  # one second left when we stop
    await store.close()

    clock = VirtualClock(start=1000)  # a new process: a new monotonic clock
    store = await open_sqlite_store(path, clock=clock)
    assert await store.expire_leases() == 0
    assert await store.get("/svc/a") is not None, "a restart must not expire leases at once"
    info = await store.lease_info(lease.id)
    assert info.remaining == pytest.approx(10), "a lease is re-armed with its full TTL"
    assert info.keys == ["/svc/a"]
    clock.advance(10.5)
    assert await store.expire_leases() == 1
    assert await store.get("/svc/a") is None
    await store.close()

    store = await open_sqlite_store(path)
    assert await store.get("/svc/a") is None, "the revoke was durable"
    await store.close()


async def test_keepalives_are_not_written(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await open_sqlite_store(path)
    lease = await store.grant(30)
    size = (tmp_path / "store.db-wal").stat().st_size
    for _ in range(1000):
        await store.keepalive(lease.id)
    assert (tmp_path / "store.db-wal").stat().st_size == size
    await store.close()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from crossway.store.sqlite import open_sqlite_store

    async def main():
        store = await open_sqlite_store(sys.argv[1])
        i = 0
        async def one(n):
            await store.put(f"/acked/{n:06d}", b"x")
            print(n, flush=True)
        while True:
            await asyncio.gather(*(one(i + j) for j in range(8)))
            i += 8

    asyncio.run(main())
    """
)


async def test_kill_9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.stdout is not None
    acked: list[int] = []
    while len(acked) < 400:
        line = await asyncio.to_thread(proc.stdout.readline)
        if not line:
            break
        acked.append(int(line))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acked.extend(int(line) for line in proc.stdout.read().split())
    assert len(acked) >= 400, "the writer died before acknowledging enough writes"

    store = await open_sqlite_store(path)
    stored = {int(kv.key.rsplit("/", 1)[1]) for kv in (await store.range("/acked/")).kvs}
    missing = set(acked) - stored
    assert not missing, f"acknowledged writes lost after kill -9: {sorted(missing)[:10]}"
    await store.close()


class FailingDisk(SQLitePersister):
    """A persister whose disk fills up on demand."""

    full = False

    def write(self, records: list[Record]) -> None:
        if self.full:
            raise OSError(28, "No space left on device")
        super().write(records)


async def test_a_failed_write_is_rolled_back_and_reported(tmp_path: Path) -> None:
    from crossway.store.local import LocalStore

    persister = FailingDisk(tmp_path / "store.db")
    store = LocalStore(name="sqlite", persister=persister, state=persister.load())
    await store.put("/k", b"kept")
    before = await store.revision()
    watch = store.watch("/", after_revision=before)
    persister.full = True
    results = await asyncio.gather(
        store.put("/k", b"lost"), store.put("/other", b"lost"), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    persister.full = False
    kv = await store.get("/k")
    assert kv is not None
    assert kv.value == b"kept"
    assert await store.get("/other") is None
    assert await store.revision() == before
    after = await store.put("/k", b"next")
    assert after.revision == before + 1, "revisions stay gapless after a rollback"
    event = await watch.__anext__()
    assert event.kv.value == b"next", "watchers never saw the rolled-back writes"
    await watch.aclose()
    await store.close()


async def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(Exception, match="not a database"):
        await open_sqlite_store(path)


async def test_compaction_folds_history_and_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await open_sqlite_store(path)
    for i in range(20):
        await store.put(f"/k/{i % 5}", str(i).encode())
    await store.delete("/k/0")
    middle = await store.revision()
    await store.put("/k/1", b"after")
    await store.delete("/k/2")
    expected = {kv.key: kv for kv in (await store.range("/")).kvs}
    await store.compact(middle)
    await store.close()

    store = await open_sqlite_store(path)
    assert {kv.key: kv for kv in (await store.range("/")).kvs} == expected
    assert await store.compacted_revision() == middle
    watch = store.watch("/", after_revision=middle)
    events = [await watch.__anext__() for _ in range(2)]
    assert [(e.type, e.kv.key) for e in events] == [
        (EventType.PUT, "/k/1"),
        (EventType.DELETE, "/k/2"),
    ]
    await watch.aclose()
    await store.close()
