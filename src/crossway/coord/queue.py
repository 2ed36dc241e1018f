"""Who holds, who waits, and whom each waiter watches: pure functions of a listing.

A lock, a semaphore of limit K and an election are one structure: a line of
contender keys under one prefix, each created by its session with "create if
absent" and bound to the session's lease. Nothing else decides the order:

Rule 1 (order). Contenders are ordered by create_revision, lowest first. The
    store gives every key a new, higher revision when it is created, so a
    newcomer always lines up behind everyone present: first come, first served.
Rule 2 (holders). The first K contenders hold (K = 1 for locks and elections).
Rule 3 (fence). A holder's fence is its key's create_revision. A key only ever
    joins at the back, so when the first place changes hands the new first key
    is younger than the old one: fences of successive holders strictly increase.

Waking without a thundering herd (each event wakes at most one waiter):

Rule 4. A waiter at position p > K watches only its predecessor (position p-1),
    and re-lists when that key changes (for K = 1: when it is deleted; nothing
    else about a predecessor can change a lock waiter's standing).
Rule 5. The first waiter (p = K) watches the K holders and re-lists when any of
    them goes: that one event frees exactly one place, which is its own.
Rule 6. A contender that finds itself holding after it may have been seen as a
    waiter writes its key once (the `acquired` revision). For K > 1 that write
    is what tells its successor "you are now the first waiter: watch the
    holders" (Rule 5); for K = 1 the successor's predecessor is the holder
    already, so the write only records since when it holds.

Why nothing is missed: the listing and the watch share a revision (the watch
replays from the listing's revision), so a change between the two is seen; a
waiter's standing changes only when a key ahead of it goes, and the first such
key to matter is exactly the one it watches (its predecessor going, or for the
first waiter a holder going), or its predecessor becoming a holder (Rule 6).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from crossway.coord.model import Entry, decode_entry
from crossway.store.types import KeyValue


@dataclass(frozen=True, slots=True)
class Contender:
    key: str
    session: str
    fence: int
    """The key's create_revision: its place in line and its fencing token."""
    mod_revision: int
    lease: int
    entry: Entry

    @property
    def since(self) -> int:
        """The revision from which it holds (when it holds)."""
        return self.entry.acquired or self.fence

    def public(self, *, value: bool = False) -> dict[str, object]:
        """As answered to clients: `name` is the session's name."""
        out: dict[str, object] = {
            "session": self.session,
            "name": self.entry.owner,
            "fence": self.fence,
            "since": self.since,
        }
        if value:
            out["value"] = self.entry.value
        return out


@dataclass(frozen=True, slots=True)
class Standing:
    """Where one session stands in a line."""

    position: int
    holding: bool
    watch: frozenset[str]
    """Keys whose change may alter this standing; empty when holding."""


def line_up(kvs: Iterable[KeyValue], prefix: str) -> list[Contender]:
    """The contenders directly under `prefix`, in line order (Rule 1)."""
    out = []
    for kv in kvs:
        session = kv.key[len(prefix) :]
        if not kv.key.startswith(prefix) or not session or "/" in session:
            continue
        entry = decode_entry(kv.value, session)
        out.append(Contender(kv.key, session, kv.create_revision, kv.mod_revision, kv.lease, entry))
    out.sort(key=lambda c: c.fence)
    return out


def position_of(line: list[Contender], session: str) -> int | None:
    for i, contender in enumerate(line):
        if contender.session == session:
            return i
    return None


def holders(line: list[Contender], limit: int) -> list[Contender]:
    return line[:limit]


def waiting(line: list[Contender], limit: int) -> list[Contender]:
    return line[limit:]


def watch_targets(line: list[Contender], position: int, limit: int) -> list[Contender]:
    """What the contender at `position` watches (Rules 4 and 5)."""
    if position < limit:
        return []
    if position == limit:
        return line[:limit]
    return [line[position - 1]]


def standing(line: list[Contender], position: int, limit: int) -> Standing:
    targets = watch_targets(line, position, limit)
    return Standing(position, position < limit, frozenset(c.key for c in targets))


def must_stamp(contender: Contender, *, limit: int, waited: bool) -> bool:
    """Whether a contender that now holds writes its `acquired` revision (Rule 6).

    With K > 1 anyone who joined behind it may have seen it waiting, so it
    always writes once; with K = 1 it writes only to record a wait.
    """
    if contender.entry.acquired:
        return False
    return limit > 1 or waited
