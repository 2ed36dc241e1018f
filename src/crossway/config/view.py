"""What one client is served, decided from an entry and the client's labels (pure).

A client whose labels match the beta's selector gets the beta; everyone else
gets the release; a deleted or never-released entry is served to nobody but
matching beta clients. The index is always the entry's mod_revision, whatever
is served, so a client's index never goes backwards when it moves between
the beta and the release.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from crossway.config.model import Entry, Format
from crossway.config.selector import Selector, parse_selector


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An entry as read from the store; `index` is 0 when the key is absent."""

    entry: Entry | None
    index: int


@dataclass(frozen=True, slots=True)
class View:
    content: str
    format: Format
    version: int
    """The release's version (0 when there is none), also when the beta is served."""
    md5: str
    beta: bool
    index: int

    @property
    def etag(self) -> str:
        return f'"{self.md5}"'


def resolve(snapshot: Snapshot, labels: Mapping[str, str]) -> View | None:
    """The view for a client with `labels`, or None when it is served nothing."""
    entry = snapshot.entry
    if entry is None:
        return None
    beta = entry.beta
    if beta is not None and _selector(beta.selector).matches(labels):
        return View(beta.content, beta.format, entry.version, beta.md5, True, snapshot.index)
    live = entry.live
    if live is None:
        return None
    return View(live.content, live.format, live.version, live.md5, False, snapshot.index)


@functools.lru_cache(maxsize=1024)
def _selector(text: str) -> Selector:
    # Stored selectors were checked when written; the record keeps the text so
    # it stays readable, and the cache keeps re-parsing off the hot path.
    return parse_selector(text)


def etag_matches(header: str | None, etag: str) -> bool:
    """Whether an `If-None-Match` header names `etag` (weak tags compare equal)."""
    if not header:
        return False
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
