"""What the config center stores, where, and which names it accepts.

Layout in the store (one entry = one `namespace/group/key`):

    /config/{ns}/{group}/{key}                        Entry: the release and the beta
    /config-history/{ns}/{group}/{key}/{version:010d}  Release: one version, never rewritten

Theory of operation
- The release and the gray-release candidate (beta) live in ONE record, so
  every change a client may care about — a new version, a beta published,
  promoted or abandoned — moves that one key's mod_revision. A long poll then
  follows exactly one key, and its index (the key's mod_revision) never goes
  backwards, whichever of the two a client is served.
- Every version is written to history in the same transaction that makes it
  the release, and the transaction also requires the history key to be absent:
  a version number is never reused and history is never rewritten.
- A deletion is a version too (`deleted=True`, empty content): the entry key
  stays, so history, rollback and long polls keep working across a delete.

Invariants
1. `entry.release.version` equals the highest version in its history.
2. Versions start at 1 and grow by one per release (publish, rollback,
   promote, delete, import of changed content).
3. Names are 1-128 letters, digits, '.', '_' or '-', starting and ending with
   a letter or digit — so they are safe as file names on export and never
   collide with the API's own path words or `_import`/`_export`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal

import msgspec

from crossway.core.errors import InvalidArgument

ENTRY_PREFIX = "/config/"
HISTORY_PREFIX = "/config-history/"
DEFAULT_GROUP = "DEFAULT_GROUP"
DEFAULT_NAMESPACE = "default"
ANONYMOUS = "anonymous"

Format = Literal["yaml", "json", "toml", "properties", "text"]
FORMATS: tuple[Format, ...] = ("yaml", "json", "toml", "properties", "text")

RESERVED_KEYS = frozenset({"history", "diff", "rollback", "promote", "beta"})
NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$")
MAX_AUTHOR = 128
MAX_MESSAGE = 1024


class Release(msgspec.Struct, frozen=True, omit_defaults=True):
    """One version of an entry: the current release, or a history record."""

    content: str
    format: Format
    version: int
    md5: str
    author: str
    time: float
    message: str = ""
    deleted: bool = False


class Beta(msgspec.Struct, frozen=True, omit_defaults=True):
    """A candidate served only to instances whose labels match `selector`."""

    content: str
    format: Format
    selector: str
    md5: str
    author: str
    time: float
    message: str = ""


class Entry(msgspec.Struct, frozen=True, omit_defaults=True):
    """The record at `/config/{ns}/{group}/{key}`."""

    release: Release | None = None
    """None while only a beta has ever been published."""
    beta: Beta | None = None

    @property
    def version(self) -> int:
        return self.release.version if self.release is not None else 0

    @property
    def live(self) -> Release | None:
        """The release unless it is a deletion."""
        release = self.release
        return release if release is not None and not release.deleted else None


_ENTRY_ENCODER = msgspec.json.Encoder()
_ENTRY_DECODER = msgspec.json.Decoder(Entry)
_RELEASE_DECODER = msgspec.json.Decoder(Release)


def encode(record: Entry | Release) -> bytes:
    return _ENTRY_ENCODER.encode(record)


def decode_entry(raw: bytes) -> Entry | None:
    """The entry in `raw`; None for an empty value (a deleted key)."""
    return _ENTRY_DECODER.decode(raw) if raw else None


def decode_release(raw: bytes) -> Release:
    return _RELEASE_DECODER.decode(raw)


def md5_of(content: str) -> str:
    # md5 names content (as Nacos and Apollo clients expect), it protects nothing.
    return hashlib.md5(content.encode("utf-8"), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class ConfigRef:
    """The address of one entry; constructed only through `ref()`, so valid."""

    namespace: str
    group: str
    key: str

    @property
    def entry_key(self) -> str:
        return f"{ENTRY_PREFIX}{self.namespace}/{self.group}/{self.key}"

    @property
    def history_prefix(self) -> str:
        # The trailing slash keeps "orders.yaml" from matching "orders.yaml.bak".
        return f"{HISTORY_PREFIX}{self.namespace}/{self.group}/{self.key}/"

    def history_key(self, version: int) -> str:
        return f"{self.history_prefix}{version:010d}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.group}/{self.key}"


def ref(namespace: str, group: str, key: str) -> ConfigRef:
    """A checked `ConfigRef`; `InvalidArgument` naming the first bad part."""
    check_name(namespace, "namespace")
    check_name(group, "group")
    check_key(key)
    return ConfigRef(namespace, group, key)


def check_name(value: str, field: str) -> str:
    if not NAME.match(value):
        raise InvalidArgument(
            f"{field} {value!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit",
            field=field,
        )
    return value


def check_key(value: str) -> str:
    check_name(value, "key")
    if value in RESERVED_KEYS:
        raise InvalidArgument(
            f"key {value!r} is reserved by the API (history, diff, rollback, promote and "
            "beta name operations on a key); choose another name",
            field="key",
        )
    return value


def check_author(value: str) -> str:
    if not value or len(value) > MAX_AUTHOR or not value.isprintable():
        raise InvalidArgument(f"author must be 1-{MAX_AUTHOR} printable characters", field="author")
    return value


def check_message(value: str) -> str:
    if len(value) > MAX_MESSAGE or any(c in value for c in "\r\x00"):
        raise InvalidArgument(
            f"message must be at most {MAX_MESSAGE} characters, without CR or NUL",
            field="message",
        )
    return value


def parse_entry_key(key: str) -> ConfigRef | None:
    """The ref of an entry key, or None for anything else under the prefix."""
    if not key.startswith(ENTRY_PREFIX):
        return None
    parts = key[len(ENTRY_PREFIX) :].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return ConfigRef(*parts)
