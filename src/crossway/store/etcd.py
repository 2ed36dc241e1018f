"""The etcd backend: the `Store` protocol over etcd's v3 gRPC API.

The store's data model is etcd's, so this backend is a thin translation
(etcd_codec.py) and a little connection handling; etcd does the work.

Theory of operation
- One gRPC channel per endpoint (aetcd's generated stubs on grpc.aio). Calls go
  to the *current* endpoint; a transport failure moves "current" to the next
  one, so the following call tries another member. Reads (which change nothing)
  are retried at once on the next endpoint; writes are not, because a write
  whose connection broke may have been applied, and only the caller can judge
  a retry (as with any network request).
- Revisions are etcd's. `put(..., if_mod_revision=N)` is a txn comparing the
  mod revision, `if_absent` compares create_revision == 0; the failure branch
  reads the key, so `CompareFailed.current` is what the compare saw, atomically.
  `txn` maps compares and Put / Delete(prefix) / Get(prefix) one to one.
- Leases are etcd's leases: `grant` rounds the TTL up to whole seconds (etcd
  also raises it to its own minimum, two seconds by default; the `Lease`
  returned says what etcd granted), `keepalive` is one request on a
  LeaseKeepAlive stream, `lease_info` is LeaseTimeToLive with its keys.
  Expiry, and the deletion of a lease's keys in one revision, are etcd's.
- Watches are etcd watches, one stream each, resumed across broken
  connections (etcd_watch.py). Compaction is etcd's; `compacted_revision()` is
  found by probing reads at old revisions (etcd refuses a read below it), by
  bisection from the last compaction this client saw.

Errors: every gRPC failure becomes a store error. A dead or unreachable etcd is
`StoreUnavailable` (a request to a dead etcd was not applied; one whose
connection broke mid-way may have been), a missing lease `LeaseNotFound`, a
request etcd refuses (too many operations in a txn, the same key twice in one
txn) `InvalidArgument`. Every request has a deadline (`request_timeout`), after which
it is `StoreUnavailable`. Cancelling a call cancels its RPC and raises
`CancelledError`; a cancelled write may or may not have been applied.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aetcd import rpc

from crossway.core.errors import CrosswayError, InvalidArgument
from crossway.store.errors import (
    CompactedError,
    CompareFailed,
    LeaseNotFound,
    StoreClosed,
    StoreUnavailable,
)
from crossway.store.etcd_codec import (
    delete_request,
    first_lease,
    key_value,
    previous_kv,
    put_request,
    range_request,
    revision_probe,
    translate_rpc_error,
    txn_request,
    txn_result,
)
from crossway.store.etcd_watch import DEFAULT_WATCH_BUFFER, EtcdWatch
from crossway.store.types import (
    NO_LEASE,
    Compare,
    Delete,
    DeleteResult,
    Get,
    GetResult,
    KeyValue,
    Lease,
    LeaseInfo,
    Op,
    Put,
    PutResult,
    RangeResult,
    TxnResult,
)

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # gRPC's default reconnect backoff grows to two minutes; an etcd that comes
    # back should be used within a second.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Find a dead connection under an idle watch. etcd refuses pings more often
    # than every 5s, and any ping without an open stream.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]

# Asks etcd to cancel a watch whose member has lost its leader, so the watch
# moves to a healthy member instead of silently going quiet.
REQUIRE_LEADER = (("hasleader", "true"),)


@dataclass(slots=True)
class _Endpoint:
    url: str
    channel: Any
    kv: Any
    lease: Any
    watch: Any


def _grpc_target(url: str) -> str:
    """ "http://host:port" (or "host:port") as a gRPC target."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http":
        raise InvalidArgument(
            f"etcd endpoint {url!r}: only http:// is supported", field="endpoints"
        )
    if not parts.hostname:
        raise InvalidArgument(f"etcd endpoint {url!r} has no host", field="endpoints")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port or 2379}"


def _endpoint(url: str) -> _Endpoint:
    channel = rpc.insecure_channel(_grpc_target(url), options=CHANNEL_OPTIONS)
    return _Endpoint(
        url, channel, rpc.KVStub(channel), rpc.LeaseStub(channel), rpc.WatchStub(channel)
    )


class _Connection:
    """The endpoints, which one is current, and the translation of failures."""

    def __init__(self, endpoints: list[_Endpoint], timeout: float) -> None:
        self._endpoints = endpoints
        self._current = 0
        self.timeout = timeout
        self.closed = False

    async def call(
        self,
        action: Callable[[_Endpoint], Awaitable[T]],
        *,
        idempotent: bool,
        lease: int = NO_LEASE,
    ) -> T:
        attempts = len(self._endpoints) if idempotent else 1
        while True:
            if self.closed:
                raise StoreClosed()
            endpoint = self._endpoints[self._current]
            try:
                return await action(endpoint)
            except rpc.AioRpcError as exc:
                error = self._translate(exc, endpoint, lease)
            attempts -= 1
            if attempts == 0 or not isinstance(error, StoreUnavailable):
                # Raised outside the except block: the grpc error is no user's concern.
                raise error

    def _translate(self, exc: Any, endpoint: _Endpoint, lease: int) -> CrosswayError:
        if self.closed:
            return StoreClosed()
        error = translate_rpc_error(
            exc.code().name, exc.details() or "", where=endpoint.url, lease=lease
        )
        if isinstance(error, StoreUnavailable):
            self._move_on(endpoint)
        return error

    def _move_on(self, failed: _Endpoint) -> None:
        if self._endpoints[self._current] is failed:
            self._current = (self._current + 1) % len(self._endpoints)

    def open_watch(self, after_failure: bool) -> tuple[Any, str]:
        """A new Watch stream (for `EtcdWatch`), on the next endpoint after a failure."""
        if self.closed:
            raise StoreClosed()
        if after_failure:
            self._move_on(self._endpoints[self._current])
        endpoint = self._endpoints[self._current]
        return endpoint.watch.Watch(metadata=REQUIRE_LEADER), endpoint.url

    async def probe(self, wait: float) -> None:
        """Wait up to `wait` seconds per endpoint for one that answers; it becomes current."""
        problems: list[str] = []
        for index, endpoint in enumerate(self._endpoints):
            try:
                await endpoint.kv.Range(revision_probe(), timeout=wait, wait_for_ready=True)
            except rpc.AioRpcError as exc:
                timed_out = exc.code().name == "DEADLINE_EXCEEDED"
                why = (
                    f"no answer within {wait:g}s" if timed_out else exc.details() or exc.code().name
                )
                problems.append(f"{endpoint.url}: {why}")
                continue
            self._current = index
            return
        raise StoreUnavailable(f"cannot reach etcd ({'; '.join(problems)})")

    async def close(self) -> None:
        self.closed = True
        for endpoint in self._endpoints:
            await endpoint.channel.close()


class EtcdStore:
    """The Store protocol on etcd. Open it with `open_etcd_store`; `close()` it."""

    name = "etcd"

    def __init__(self, connection: _Connection, *, watch_buffer: int) -> None:
        self._conn = connection
        self._timeout = connection.timeout
        self._watch_buffer = watch_buffer
        self._watches: set[EtcdWatch] = set()
        # The newest compaction this client knows of: where the search starts.
        self._compacted_hint = 0

    # Reads (linearizable: etcd answers them through its leader)

    async def get(self, key: str) -> KeyValue | None:
        request = range_request(key)
        response = await self._read(lambda ep: ep.kv.Range(request, timeout=self._timeout))
        return key_value(response.kvs[0]) if response.kvs else None

    async def range(self, prefix: str, *, limit: int = 0) -> RangeResult:
        request = range_request(prefix, prefix=True, limit=limit)
        response = await self._read(lambda ep: ep.kv.Range(request, timeout=self._timeout))
        return RangeResult([key_value(kv) for kv in response.kvs], response.header.revision)

    async def revision(self) -> int:
        return await self._revision_at(0)

    async def _revision_at(self, revision: int) -> int:
        request = revision_probe(revision)
        response = await self._read(lambda ep: ep.kv.Range(request, timeout=self._timeout))
        current: int = response.header.revision
        return current

    async def _read(self, action: Callable[[_Endpoint], Awaitable[Any]]) -> Any:
        return await self._conn.call(action, idempotent=True)

    async def _write(self, action: Callable[[_Endpoint], Awaitable[Any]], lease: int = 0) -> Any:
        return await self._conn.call(action, idempotent=False, lease=lease)

    # Writes

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        lease: int = NO_LEASE,
        if_mod_revision: int | None = None,
        if_absent: bool = False,
    ) -> PutResult:
        if if_absent or if_mod_revision == 0:
            return await self._put_if(Compare.absent(key), Put(key, value, lease))
        if if_mod_revision is not None:
            return await self._put_if(
                Compare.mod_revision_is(key, if_mod_revision), Put(key, value, lease)
            )
        request = put_request(Put(key, value, lease))
        response = await self._write(lambda ep: ep.kv.Put(request, timeout=self._timeout), lease)
        return PutResult(response.header.revision, previous_kv(response))

    async def _put_if(self, compare: Compare, put: Put) -> PutResult:
        result = await self._txn_or_fail(compare, put)
        assert isinstance(result, PutResult)
        return result

    async def _txn_or_fail(self, compare: Compare, op: Put | Delete) -> PutResult | DeleteResult:
        """Apply `op` if `compare` holds, else raise CompareFailed with the key as it was."""
        result = await self.txn([compare], [op], [Get(compare.key)])
        if not result.succeeded:
            current = result.results[0]
            assert isinstance(current, GetResult)
            raise CompareFailed(compare.key, current.kvs[0] if current.kvs else None)
        outcome = result.results[0]
        assert isinstance(outcome, PutResult | DeleteResult)
        return outcome

    async def delete(self, key: str, *, if_mod_revision: int | None = None) -> DeleteResult:
        if if_mod_revision is not None:
            result = await self._txn_or_fail(
                Compare.mod_revision_is(key, if_mod_revision), Delete(key)
            )
            assert isinstance(result, DeleteResult)
            return result
        return await self._delete(Delete(key))

    async def delete_prefix(self, prefix: str) -> DeleteResult:
        return await self._delete(Delete(prefix, prefix=True))

    async def _delete(self, op: Delete) -> DeleteResult:
        request = delete_request(op)
        response = await self._write(lambda ep: ep.kv.DeleteRange(request, timeout=self._timeout))
        return DeleteResult(response.header.revision, [key_value(kv) for kv in response.prev_kvs])

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """One etcd Txn. etcd refuses (`InvalidArgument`) a branch that writes
        one key twice and, by default, more than 128 operations."""
        request = txn_request(compares, success, failure)
        lease = first_lease([*success, *failure])
        response = await self._write(lambda ep: ep.kv.Txn(request, timeout=self._timeout), lease)
        return txn_result(response, success if response.succeeded else failure)

    # Leases

    async def grant(self, ttl: float) -> Lease:
        """A new etcd lease of `ttl` rounded up to whole seconds (and raised to
        etcd's minimum); the returned `Lease.ttl` is what etcd granted."""
        if ttl <= 0:
            raise ValueError("a lease TTL must be positive")
        request = rpc.LeaseGrantRequest(TTL=math.ceil(ttl))
        response = await self._write(lambda ep: ep.lease.LeaseGrant(request, timeout=self._timeout))
        if response.error:
            raise StoreUnavailable(f"etcd did not grant the lease: {response.error}")
        return Lease(response.ID, float(response.TTL))

    async def keepalive(self, lease: int) -> float:
        """Renew `lease` once (one request on a LeaseKeepAlive stream)."""

        async def renew(endpoint: _Endpoint) -> Any:
            call = endpoint.lease.LeaseKeepAlive(timeout=self._timeout)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                return await call.read()
            finally:
                call.cancel()

        response = await self._conn.call(renew, idempotent=True, lease=lease)
        # etcd answers TTL 0 for a lease it does not know (expired or never granted).
        if not isinstance(response, rpc.LeaseKeepAliveResponse) or response.TTL <= 0:
            raise LeaseNotFound(lease)
        return float(response.TTL)

    async def revoke(self, lease: int) -> None:
        request = rpc.LeaseRevokeRequest(ID=lease)
        try:
            await self._write(
                lambda ep: ep.lease.LeaseRevoke(request, timeout=self._timeout), lease
            )
        except LeaseNotFound:
            return

    async def lease_info(self, lease: int) -> LeaseInfo:
        request = rpc.LeaseTimeToLiveRequest(ID=lease, keys=True)
        response = await self._conn.call(
            lambda ep: ep.lease.LeaseTimeToLive(request, timeout=self._timeout),
            idempotent=True,
            lease=lease,
        )
        if response.TTL < 0:
            raise LeaseNotFound(lease)
        keys = sorted(raw.decode("utf-8", "surrogateescape") for raw in response.keys)
        return LeaseInfo(lease, float(response.grantedTTL), float(response.TTL), keys)

    # Watches and compaction

    def watch(self, prefix: str, *, after_revision: int | None = None) -> EtcdWatch:
        """An etcd watch on `prefix`. Without `after_revision` it starts at the
        revision etcd registers it at, shortly after this call returns."""
        watch = EtcdWatch(
            self._conn.open_watch,
            prefix,
            after_revision,
            buffer_limit=self._watch_buffer,
            on_close=self._watches.discard,
        )
        self._watches.add(watch)
        return watch

    async def compact(self, revision: int) -> None:
        """etcd's compaction at `revision`; compacting what is already compacted
        is a no-op, a revision beyond the current one is a ValueError."""
        request = rpc.CompactionRequest(revision=revision, physical=False)
        try:
            await self._write(lambda ep: ep.kv.Compact(request, timeout=self._timeout))
        except CompactedError:
            pass
        except InvalidArgument as exc:
            if "future" not in exc.message:
                raise
            raise ValueError(f"cannot compact revision {revision}: it is in the future") from None
        self._compacted_hint = max(self._compacted_hint, revision)

    async def compacted_revision(self) -> int:
        """etcd keeps no public record of it: the smallest revision it can
        still read at is found by bisection (one read when nothing changed)."""
        low, high = max(self._compacted_hint, 1), await self.revision()
        if await self._readable(low):
            high = low
        while low < high:
            middle = (low + high) // 2
            if await self._readable(middle):
                high = middle
            else:
                low = middle + 1
        # Reading at revision 1 tells "never compacted" from "compacted at 1" apart
        # only through what this client did itself.
        if low > 1:
            self._compacted_hint = max(self._compacted_hint, low)
        return self._compacted_hint

    async def _readable(self, revision: int) -> bool:
        try:
            await self._revision_at(revision)
        except CompactedError:
            return False
        return True

    # Lifecycle

    async def close(self) -> None:
        """End every open watch (with `StoreClosed`) and close the channels."""
        if self._conn.closed:
            return
        self._conn.closed = True
        for watch in list(self._watches):
            await watch.shutdown(StoreClosed())
        await self._conn.close()

    async def __aenter__(self) -> EtcdStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def open_etcd_store(
    endpoints: Sequence[str],
    *,
    request_timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    watch_buffer: int = DEFAULT_WATCH_BUFFER,
) -> EtcdStore:
    """Connect to etcd at `endpoints` ("http://host:port", members of one cluster).

    Waits up to `connect_timeout` seconds per endpoint for one that answers,
    else raises `StoreUnavailable`. `request_timeout` bounds every later request;
    `watch_buffer` is how many events a watch holds for a slow consumer before
    it stops reading from etcd. Raises `InvalidArgument` for a malformed
    endpoint. Cancelled, it closes what it opened.
    """
    if not endpoints:
        raise InvalidArgument("no etcd endpoint given", field="endpoints")
    for url in endpoints:  # refuse a malformed endpoint before opening any channel
        _grpc_target(url)
    connection = _Connection([_endpoint(url) for url in endpoints], request_timeout)
    try:
        await connection.probe(connect_timeout)
    except BaseException:
        await connection.close()
        raise
    return EtcdStore(connection, watch_buffer=watch_buffer)


__all__ = ["EtcdStore", "EtcdWatch", "open_etcd_store"]
