"""Many entries at once: listings, import as one transaction, export.

Theory of operation
- Import validates every entry first — names, format, size, content — and
  reports every problem (with the entry, the source file when the client
  named one, line and column) before anything is written. Only a batch with
  no problem is planned.
- The plan reads the namespace once (one range, one revision). An entry
  whose release already has the same content and format is left alone;
  every other one gets the next version. All of them are committed in ONE
  store transaction that compares each changed entry's mod_revision with the
  one read, so an import lands whole or not at all, and a concurrent writer
  makes it re-plan rather than be overwritten.
- Listings and export read one range, so what they show is one consistent
  revision of the namespace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from crossway.config.center import CAS_ATTEMPTS, Author, Change, ConfigCenter, write_ops
from crossway.config.formats import ContentInvalid, format_of_extension
from crossway.config.model import (
    ENTRY_PREFIX,
    ConfigRef,
    Entry,
    Format,
    Release,
    check_name,
    decode_entry,
    md5_of,
    parse_entry_key,
    ref,
)
from crossway.core.errors import Conflict, CrosswayError, InvalidArgument
from crossway.store import Compare, KeyValue, Op

Action = Literal["created", "updated", "unchanged"]


class ImportEntry(msgspec.Struct, forbid_unknown_fields=True):
    group: str
    key: str
    content: str
    format: Format | None = None
    """Default: from the key's extension, else text."""
    source: str | None = None
    """Where the entry came from (a file path), echoed in errors."""


class ImportRequest(msgspec.Struct, forbid_unknown_fields=True):
    entries: list[ImportEntry]
    message: str = ""
    dry_run: bool = False


class ImportResult(msgspec.Struct):
    group: str
    key: str
    action: Action
    version: int


class ImportReport(msgspec.Struct):
    namespace: str
    revision: int
    dry_run: bool
    entries: list[ImportResult]


class ImportInvalid(InvalidArgument):
    code = "invalid_import"


class KeySummary(msgspec.Struct):
    key: str
    version: int
    format: Format | None
    md5: str | None
    modified: float | None
    author: str | None
    beta: bool = False
    beta_selector: str | None = None


class ExportEntry(msgspec.Struct):
    group: str
    key: str
    format: Format
    version: int
    md5: str
    content: str


@dataclass(frozen=True, slots=True)
class _Checked:
    ref: ConfigRef
    content: str
    format: Format


async def namespaces(center: ConfigCenter) -> tuple[list[str], int]:
    listing = await center.store.range(ENTRY_PREFIX)
    found = {r.namespace for r, _ in _visible(listing.kvs)}
    return sorted(found), listing.revision


async def groups(center: ConfigCenter, namespace: str) -> tuple[list[dict[str, Any]], int]:
    check_name(namespace, "namespace")
    listing = await center.store.range(f"{ENTRY_PREFIX}{namespace}/")
    counts: dict[str, int] = {}
    for r, _ in _visible(listing.kvs):
        counts[r.group] = counts.get(r.group, 0) + 1
    return [{"group": g, "keys": n} for g, n in sorted(counts.items())], listing.revision


async def keys(center: ConfigCenter, namespace: str, group: str) -> tuple[list[KeySummary], int]:
    check_name(namespace, "namespace")
    check_name(group, "group")
    listing = await center.store.range(f"{ENTRY_PREFIX}{namespace}/{group}/")
    return [_summary(r, e) for r, e in _visible(listing.kvs)], listing.revision


async def export(
    center: ConfigCenter, namespace: str, group: str | None = None
) -> tuple[list[ExportEntry], int]:
    """Every live release of `namespace` (of one `group` if given), at one revision."""
    check_name(namespace, "namespace")
    prefix = f"{ENTRY_PREFIX}{namespace}/" + (f"{check_name(group, 'group')}/" if group else "")
    listing = await center.store.range(prefix)
    out = []
    for r, entry in _visible(listing.kvs):
        live = entry.live
        if live is not None:
            out.append(
                ExportEntry(r.group, r.key, live.format, live.version, live.md5, live.content)
            )
    return out, listing.revision


async def import_entries(
    center: ConfigCenter, namespace: str, request: ImportRequest, *, author: Author
) -> ImportReport:
    """Validate everything, then write every changed entry in one transaction.

    Raises `ImportInvalid` (400, `errors` lists each problem) before writing
    anything; `ContentTooLarge` (413) when the batch exceeds one transaction
    of the store; `Conflict` (409) when entries keep changing under it.
    With `dry_run` the report says what would happen and nothing is written.
    """
    check_name(namespace, "namespace")
    author = author.check().or_message("import")
    checked = _check_all(center, namespace, request.entries)
    for _ in range(CAS_ATTEMPTS):
        listing = await center.store.range(f"{ENTRY_PREFIX}{namespace}/")
        current = {kv.key: kv for kv in listing.kvs}
        results, compares, ops = _plan(center, checked, current, author)
        if request.dry_run or not ops:
            return ImportReport(namespace, listing.revision, request.dry_run, results)
        center.check_txn(ops)
        done = await center.store.txn(compares, ops)
        if done.succeeded:
            return ImportReport(namespace, done.revision, False, results)
    raise Conflict(f"entries of {namespace} are changing too fast; retry the import")


def _check_all(center: ConfigCenter, namespace: str, entries: list[ImportEntry]) -> list[_Checked]:
    checked: list[_Checked] = []
    errors: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        try:
            item = _check_one(center, namespace, entry)
            if (entry.group, entry.key) in seen:
                raise InvalidArgument(f"{entry.group}/{entry.key} appears more than once")
            seen.add((entry.group, entry.key))
            checked.append(item)
        except CrosswayError as exc:
            errors.append(_problem(entry, exc))
    if errors:
        first = errors[0]
        where = first.get("source") or first["entry"]
        raise ImportInvalid(
            f"{len(errors)} of {len(entries)} entries are invalid, nothing was imported; "
            f"first: {where}: {first['message']}",
            errors=errors,
        )
    return checked


def _check_one(center: ConfigCenter, namespace: str, entry: ImportEntry) -> _Checked:
    r = ref(namespace, entry.group, entry.key)
    fmt = entry.format or format_of_extension(entry.key) or "text"
    center.check_content(entry.content, fmt)
    return _Checked(r, entry.content, fmt)


def _problem(entry: ImportEntry, exc: CrosswayError) -> dict[str, Any]:
    problem: dict[str, Any] = {"entry": f"{entry.group}/{entry.key}", "message": exc.message}
    if entry.source is not None:
        problem["source"] = entry.source
    if isinstance(exc, ContentInvalid):
        problem.update(format=exc.format, line=exc.line, column=exc.column)
    elif "field" in exc.details:
        problem["field"] = exc.details["field"]
    return problem


def _plan(
    center: ConfigCenter,
    checked: list[_Checked],
    current: dict[str, KeyValue],
    author: Author,
) -> tuple[list[ImportResult], list[Compare], list[Op]]:
    results: list[ImportResult] = []
    compares: list[Compare] = []
    ops: list[Op] = []
    for item in checked:
        kv = current.get(item.ref.entry_key)
        entry = decode_entry(kv.value) if kv is not None else None
        live = entry.live if entry else None
        r = item.ref
        if live is not None and live.md5 == md5_of(item.content) and live.format == item.format:
            results.append(ImportResult(r.group, r.key, "unchanged", live.version))
            continue
        release = center.next_release(entry, item.content, item.format, author)
        change = Change(Entry(release, entry.beta if entry else None), release)
        more_compares, more_ops = write_ops(r, kv.mod_revision if kv else 0, change)
        compares += more_compares
        ops += more_ops
        action: Action = "created" if live is None else "updated"
        results.append(ImportResult(r.group, r.key, action, release.version))
    return results, compares, ops


def _visible(kvs: list[KeyValue]) -> list[tuple[ConfigRef, Entry]]:
    """Entries with a live release or a beta, by ref (deleted ones are hidden)."""
    out = []
    for kv in kvs:
        r = parse_entry_key(kv.key)
        entry = decode_entry(kv.value) if r is not None else None
        if r is not None and entry is not None and (entry.live or entry.beta):
            out.append((r, entry))
    return out


def _summary(r: ConfigRef, entry: Entry) -> KeySummary:
    live: Release | None = entry.live
    beta = entry.beta
    return KeySummary(
        key=r.key,
        version=entry.version if live else 0,
        format=live.format if live else None,
        md5=live.md5 if live else None,
        modified=live.time if live else None,
        author=live.author if live else None,
        beta=beta is not None,
        beta_selector=beta.selector if beta else None,
    )
