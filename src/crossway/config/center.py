"""The config center on `Store`: publish, read, history, diff, rollback, gray release.

Theory of operation
- Every write is a *plan*: a pure function from the entry as read to the
  change to make (a new entry record, and the new version for history when
  there is one), or None when there is nothing to do. `_apply` reads the
  entry, runs the plan and commits it in ONE store transaction that compares
  the entry key's mod_revision with the one read (and requires the history
  key to be absent). When a concurrent writer got there first the
  transaction fails, and the plan runs again on the fresh entry — so a
  caller's `if_version` (HTTP `If-Match`) is always checked against the
  entry the write actually replaces, and two writers never mint the same
  version.
- Reads are plain store reads: a `PUT` followed by a `GET` on any control
  plane sees the write.
- Limits are checked before anything is written: the content size, and the
  encoded size of the transaction (etcd refuses requests over 1.5 MiB by
  default), so a write either fits or is refused with 413.

On failure nothing is half-written: a transaction is all-or-nothing. On
cancellation a write may or may not have been applied, exactly as with a
lost network request; reading the entry again tells which.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from crossway.config.formats import check_content
from crossway.config.model import (
    Beta,
    ConfigRef,
    Entry,
    Format,
    Release,
    check_author,
    check_message,
    decode_entry,
    decode_release,
    encode,
    md5_of,
)
from crossway.config.selector import parse_selector
from crossway.config.view import Snapshot
from crossway.core.clock import Clock, SystemClock
from crossway.core.errors import (
    Conflict,
    CrosswayError,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
)
from crossway.store import Compare, Op, Put, Store

CAS_ATTEMPTS = 8


class ContentTooLarge(CrosswayError):
    code = "payload_too_large"
    status = 413


@dataclass(frozen=True, slots=True)
class Limits:
    """What one entry and one transaction may hold on a backend."""

    max_content: int = 512 * 1024
    max_txn_bytes: int = 64 << 20
    max_txn_ops: int = 10_000

    @classmethod
    def for_store(cls, store_name: str) -> Limits:
        if store_name == "etcd":
            # etcd's defaults: --max-request-bytes 1.5 MiB, --max-txn-ops 128.
            return cls(max_txn_bytes=1_400_000, max_txn_ops=128)
        return cls()


@dataclass(frozen=True, slots=True)
class Change:
    entry: Entry
    release: Release | None = None
    """The new version to write to history, when the release changes."""


Plan = Callable[[Entry | None], Change | None]


@dataclass(frozen=True, slots=True)
class Published:
    """The outcome of a write; `changed` is False when it was a no-op."""

    version: int
    revision: int
    md5: str
    changed: bool = True
    beta: bool = False
    selector: str | None = None


@dataclass(frozen=True, slots=True)
class Author:
    """Who makes a change and why; `check()`ed before any write."""

    name: str
    message: str = ""

    def check(self) -> Author:
        check_author(self.name)
        check_message(self.message)
        return self

    def or_message(self, default: str) -> Author:
        return self if self.message else Author(self.name, default)


class ConfigCenter:
    """Configuration entries on `store`. Every method raises the store's
    `StoreUnavailable` (503) when the backend cannot answer; reads change
    nothing when cancelled."""

    def __init__(
        self, store: Store, *, clock: Clock | None = None, limits: Limits | None = None
    ) -> None:
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.limits = limits or Limits.for_store(store.name)

    # Reads.

    async def read(self, ref: ConfigRef) -> Snapshot:
        """The entry and its index (mod_revision); `Snapshot(None, 0)` when absent."""
        kv = await self.store.get(ref.entry_key)
        if kv is None:
            return Snapshot(None, 0)
        return Snapshot(decode_entry(kv.value), kv.mod_revision)

    async def history(self, ref: ConfigRef) -> list[Release]:
        """Every version, newest first; `NotFound` when the entry never had one."""
        listing = await self.store.range(ref.history_prefix)
        releases = [decode_release(kv.value) for kv in listing.kvs]
        if not releases:
            raise NotFound(f"{ref} has no history")
        return releases[::-1]

    async def version(self, ref: ConfigRef, version: int) -> Release:
        """One version from history; `NotFound` (404) when there is no such version."""
        kv = await self.store.get(ref.history_key(version)) if version > 0 else None
        if kv is None:
            raise NotFound(f"{ref} has no version {version}", field="version")
        return decode_release(kv.value)

    async def diff(self, ref: ConfigRef, old: int | None, new: int | None) -> str:
        """A unified diff from version `old` to `new` (default: the previous
        version to the current one); empty when they are the same."""
        if new is None:
            entry = (await self.read(ref)).entry
            new = entry.version if entry is not None else 0
        if old is None:
            old = new - 1
        before, after = await self.version(ref, old), await self.version(ref, new)
        return unified_diff(before.content, after.content, f"{ref}@{old}", f"{ref}@{new}")

    # Writes.

    async def publish(
        self,
        ref: ConfigRef,
        content: str,
        *,
        fmt: Format,
        author: Author,
        if_version: int | None = None,
    ) -> Published:
        """Make `content` the release (a new version), unless it already is.

        Raises `ContentInvalid` (400) when it does not parse as `fmt`,
        `ContentTooLarge` (413), `PreconditionFailed` (412) when `if_version`
        is not the current version, `Conflict` (409) when the entry keeps
        changing under us. Nothing is stored on any of these.
        """
        self.check_content(content, fmt)
        author.check()
        md5 = md5_of(content)

        def plan(entry: Entry | None) -> Change | None:
            _check_version(ref, entry, if_version)
            live = entry.live if entry else None
            if live is not None and live.md5 == md5 and live.format == fmt:
                return None
            release = self.next_release(entry, content, fmt, author)
            return Change(Entry(release, entry.beta if entry else None), release)

        return await self._commit(ref, plan)

    async def delete(
        self, ref: ConfigRef, *, author: Author, if_version: int | None = None
    ) -> Published:
        """Record a deletion as a new version and drop any beta; `NotFound`
        when there is no release to delete."""
        author = author.check().or_message("deleted")

        def plan(entry: Entry | None) -> Change:
            _check_version(ref, entry, if_version)
            live = entry.live if entry else None
            if live is None:
                raise NotFound(f"{ref} does not exist")
            release = self.next_release(entry, "", live.format, author, deleted=True)
            return Change(Entry(release), release)

        return await self._commit(ref, plan)

    async def rollback(
        self, ref: ConfigRef, version: int, *, author: Author, if_version: int | None = None
    ) -> Published:
        """A new version with the content of `version` (history is kept)."""
        target = await self.version(ref, version)
        if target.deleted:
            raise InvalidArgument(
                f"version {version} of {ref} is a deletion; roll back to a version with content",
                field="version",
            )
        author = author.check().or_message(f"rollback to version {version}")

        def plan(entry: Entry | None) -> Change:
            _check_version(ref, entry, if_version)
            release = self.next_release(entry, target.content, target.format, author)
            return Change(Entry(release, entry.beta if entry else None), release)

        return await self._commit(ref, plan)

    async def publish_beta(
        self,
        ref: ConfigRef,
        content: str,
        *,
        fmt: Format,
        selector: str,
        author: Author,
        if_version: int | None = None,
    ) -> Published:
        """Publish (or replace) the gray-release candidate for instances whose
        labels match `selector`; the release is untouched. Raises as `publish`,
        and `SelectorError` (400) for a bad selector."""
        canonical = str(parse_selector(selector, field="beta"))
        self.check_content(content, fmt)
        author.check()
        now = self.clock.wall()
        beta = Beta(content, fmt, canonical, md5_of(content), author.name, now, author.message)

        def plan(entry: Entry | None) -> Change:
            _check_version(ref, entry, if_version)
            return Change(Entry(entry.release if entry else None, beta))

        return await self._commit(ref, plan)

    async def promote(
        self, ref: ConfigRef, *, author: Author, if_version: int | None = None
    ) -> Published:
        """Make the beta the release (a new version) and clear it; `NotFound`
        when there is no beta."""
        author.check()

        def plan(entry: Entry | None) -> Change:
            _check_version(ref, entry, if_version)
            beta = entry.beta if entry else None
            if beta is None:
                raise NotFound(f"{ref} has no beta to promote")
            who = author.or_message(beta.message or f"promote beta ({beta.selector})")
            release = self.next_release(entry, beta.content, beta.format, who)
            return Change(Entry(release), release)

        return await self._commit(ref, plan)

    async def abandon(self, ref: ConfigRef, *, if_version: int | None = None) -> Published:
        """Drop the beta; clients that matched it get the release again."""

        def plan(entry: Entry | None) -> Change:
            _check_version(ref, entry, if_version)
            if entry is None or entry.beta is None:
                raise NotFound(f"{ref} has no beta")
            return Change(Entry(entry.release))

        return await self._commit(ref, plan)

    # Machinery.

    def check_content(self, content: str, fmt: Format) -> None:
        """`ContentTooLarge` (413) or `ContentInvalid` (400) unless `content` may be stored."""
        size = len(content.encode("utf-8"))
        if size > self.limits.max_content:
            raise ContentTooLarge(
                f"content is {size} bytes; an entry holds at most {self.limits.max_content}"
            )
        check_content(content, fmt)

    def next_release(
        self,
        entry: Entry | None,
        content: str,
        fmt: Format,
        author: Author,
        *,
        deleted: bool = False,
    ) -> Release:
        """The version that would follow `entry`'s release, stamped now (pure
        but for the clock; writes nothing)."""
        version = (entry.version if entry else 0) + 1
        return Release(
            content,
            fmt,
            version,
            md5_of(content),
            author.name,
            self.clock.wall(),
            author.message,
            deleted,
        )

    async def _commit(self, ref: ConfigRef, plan: Plan) -> Published:
        # Bounded retries: each failed transaction means another writer made
        # progress, so only a hot entry under many writers ends in Conflict.
        for _ in range(CAS_ATTEMPTS):
            kv = await self.store.get(ref.entry_key)
            entry = decode_entry(kv.value) if kv is not None else None
            index = kv.mod_revision if kv is not None else 0
            change = plan(entry)
            if change is None:
                md5 = entry.release.md5 if entry and entry.release else ""
                return Published(entry.version if entry else 0, index, md5, changed=False)
            compares, ops = write_ops(ref, index, change)
            self.check_txn(ops)
            result = await self.store.txn(compares, ops)
            if result.succeeded:
                return _published(change, result.revision)
        raise Conflict(f"{ref} is changing too fast; read it again and retry")

    def check_txn(self, ops: list[Op]) -> None:
        """`ContentTooLarge` when `ops` exceed what one transaction may hold."""
        size = sum(len(op.key) + len(op.value) for op in ops if isinstance(op, Put))
        if size > self.limits.max_txn_bytes:
            raise ContentTooLarge(
                f"the change needs {size} bytes in one transaction; the store takes at most "
                f"{self.limits.max_txn_bytes}"
            )
        if len(ops) > self.limits.max_txn_ops:
            raise ContentTooLarge(
                f"the change needs {len(ops)} writes in one transaction; the store takes at most "
                f"{self.limits.max_txn_ops} (split it, e.g. import one group at a time)"
            )


def write_ops(ref: ConfigRef, index: int, change: Change) -> tuple[list[Compare], list[Op]]:
    """The compares and puts that commit `change` over an entry read at `index`."""
    compares = [Compare.mod_revision_is(ref.entry_key, index)]
    ops: list[Op] = [Put(ref.entry_key, encode(change.entry))]
    if change.release is not None:
        history_key = ref.history_key(change.release.version)
        compares.append(Compare.absent(history_key))
        ops.append(Put(history_key, encode(change.release)))
    return compares, ops


def _published(change: Change, revision: int) -> Published:
    beta = change.entry.beta if change.release is None else None
    if beta is not None:
        return Published(
            change.entry.version, revision, beta.md5, beta=True, selector=beta.selector
        )
    release = change.entry.release
    md5 = release.md5 if release is not None else ""
    return Published(change.entry.version, revision, md5)


def _check_version(ref: ConfigRef, entry: Entry | None, expected: int | None) -> None:
    if expected is None:
        return
    actual = entry.version if entry else 0
    if actual != expected:
        raise PreconditionFailed(
            f"{ref} is at version {actual}, not {expected}; read it again and retry",
            version=actual,
        )


def unified_diff(before: str, after: str, old_name: str, new_name: str) -> str:
    return "".join(
        difflib.unified_diff(_diff_lines(before), _diff_lines(after), old_name, new_name)
    )


def _diff_lines(text: str) -> list[str]:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        # As git does, so that the last lines of the two sides never run together.
        lines[-1] += "\n\\ No newline at end of file\n"
    return lines
