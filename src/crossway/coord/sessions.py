"""Sessions: a store lease with a name, the unit of liveness for coordination.

A session is a lease (its id is the lease id in hex). Everything a session
holds or waits for — lock and semaphore places, candidacies — is a key bound to
that lease, and so is `/sessions/{id}`, which describes it for listings. Hence:

- renewing a session is one lease keepalive (memory only in every backend);
- ending a session (DELETE, or the TTL running out because its owner died)
  deletes all of its keys in one store revision: every lock it held is
  released and every waiter behind it hears so through its watch;
- there is no state to clean up anywhere else.

Failure: store errors propagate unchanged (`StoreUnavailable` → 503); an unknown
or expired session is `SessionNotFound` (404). A cancelled `create` may leave a
lease with no keys, which simply expires after its TTL.
"""

from __future__ import annotations

from dataclasses import dataclass

from crossway.coord.model import (
    KIND_PREFIX,
    SESSIONS_PREFIX,
    SessionNotFound,
    SessionRecord,
    check_session_name,
    decode_record,
    encode,
    parse_session,
    session_id,
)
from crossway.core.clock import Clock, SystemClock
from crossway.store.errors import LeaseNotFound
from crossway.store.protocol import Store


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session as answered to clients."""

    record: SessionRecord
    remaining: float | None = None
    """Seconds left before it expires unless renewed, when known."""


class Sessions:
    def __init__(self, store: Store, *, clock: Clock | None = None) -> None:
        self._store = store
        self._clock = clock or SystemClock()

    async def create(self, *, ttl: float, name: str = "") -> SessionRecord:
        """Grant a lease of `ttl` seconds and describe it under `/sessions/`.

        The store may round the TTL (etcd has a minimum); the record says what
        was granted."""
        check_session_name(name)
        lease = await self._store.grant(ttl)
        sid = session_id(lease.id)
        record = SessionRecord(id=sid, name=name, ttl=lease.ttl, created=self._clock.wall())
        try:
            await self._store.put(SESSIONS_PREFIX + sid, encode(record), lease=lease.id)
        except LeaseNotFound:
            raise SessionNotFound(sid) from None  # expired already: a TTL shorter than a write
        return record

    async def renew(self, session: str) -> SessionView:
        """Renew to the full TTL; `SessionNotFound` when it has expired."""
        sid, lease = parse_session(session)
        try:
            ttl = await self._store.keepalive(lease)
        except LeaseNotFound:
            raise SessionNotFound(sid) from None
        record = await self._record(sid)
        return SessionView(record, remaining=ttl)

    async def destroy(self, session: str) -> list[str]:
        """End the session, releasing everything it holds or waits for.

        Returns what was released, as "locks/NAME", "elections/NAME" … .
        `SessionNotFound` when it does not exist (already ended)."""
        sid, lease = parse_session(session)
        try:
            info = await self._store.lease_info(lease)
        except LeaseNotFound:
            raise SessionNotFound(sid) from None
        await self._store.revoke(lease)
        return sorted(released for key in info.keys if (released := _held_name(key)) is not None)

    async def get(self, session: str) -> SessionView:
        sid, lease = parse_session(session)
        try:
            info = await self._store.lease_info(lease)
        except LeaseNotFound:
            raise SessionNotFound(sid) from None
        return SessionView(await self._record(sid), remaining=info.remaining)

    async def record(self, session: str) -> SessionRecord:
        """The stored description; `SessionNotFound` when it has ended."""
        sid, _ = parse_session(session)
        return await self._record(sid)

    async def list(self) -> tuple[list[SessionRecord], int]:
        """Every live session, by id, and the revision of the listing."""
        listing = await self._store.range(SESSIONS_PREFIX)
        records = [decode_record(kv.value, kv.key[len(SESSIONS_PREFIX) :]) for kv in listing.kvs]
        return records, listing.revision

    async def _record(self, sid: str) -> SessionRecord:
        kv = await self._store.get(SESSIONS_PREFIX + sid)
        if kv is None:
            raise SessionNotFound(sid)
        return decode_record(kv.value, sid)


def _held_name(key: str) -> str | None:
    for prefix in KIND_PREFIX.values():
        if key.startswith(prefix):
            return key[1:].rsplit("/", 1)[0]
    return None
