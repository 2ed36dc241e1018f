"""Coordination's keys, stored values, validation and errors.

Layout in the store (every key below a session's lease dies with it):

    /sessions/{session}               SessionRecord   bound to the session's lease
    /locks/{name}/{session}           Entry           one contender of a lock
    /semaphores/{name}                Limit           the agreed limit (no lease)
    /semaphores/{name}/{session}      Entry           one contender of a semaphore
    /elections/{name}/{session}       Entry           one candidate of an election

A session id is its lease id in lower-case hex, as the registry spells lease
ids. Names are 1-128 letters, digits, '.', '_' or '-' and never contain '/',
so `/locks/{name}/` is a prefix of exactly one lock's contenders.

Decoding is forgiving (a value someone else wrote under our prefixes is read as
an anonymous contender rather than crashing a listing); what clients send is
validated strictly, with an error naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import msgspec

from crossway.core.durations import format_duration, parse_duration
from crossway.core.errors import Conflict, InvalidArgument, NotFound

SESSIONS_PREFIX = "/sessions/"
Kind = Literal["lock", "semaphore", "election"]
KIND_PREFIX: dict[Kind, str] = {
    "lock": "/locks/",
    "semaphore": "/semaphores/",
    "election": "/elections/",
}

NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$")
MIN_TTL, MAX_TTL = 1.0, 24 * 3600.0
MAX_SESSION_NAME = 128
MAX_VALUE = 4096
MAX_LIMIT = 10_000


class SessionRecord(msgspec.Struct, frozen=True):
    """What `/sessions/{id}` holds: enough to list sessions for people."""

    id: str
    name: str
    ttl: float
    created: float


class Entry(msgspec.Struct, frozen=True, omit_defaults=True):
    """The value of one contender's key.

    `acquired` is the revision from which the contender holds, written by the
    contender when it stops waiting (0: not written; it then holds since its
    key was created). For a semaphore that write also wakes its successor.
    """

    session: str
    owner: str = ""
    value: str = ""
    acquired: int = 0


class Limit(msgspec.Struct, frozen=True):
    limit: int


@dataclass(frozen=True, slots=True)
class Line:
    """One queue of contenders: a lock (limit 1), a semaphore or an election."""

    kind: Kind
    name: str
    limit: int = 1

    @property
    def prefix(self) -> str:
        return f"{KIND_PREFIX[self.kind]}{self.name}/"

    @property
    def meta(self) -> str | None:
        """The key holding the agreed limit (semaphores only)."""
        return f"{KIND_PREFIX[self.kind]}{self.name}" if self.kind == "semaphore" else None

    def key(self, session: str) -> str:
        return self.prefix + session


# Validation of what clients send.


def check_name(value: str, field: str = "name") -> str:
    if not NAME.match(value):
        raise InvalidArgument(
            f"{field} {value!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit",
            field=field,
        )
    return value


def session_id(lease: int) -> str:
    return f"{lease:x}"


def parse_session(text: str | None, field: str = "session") -> tuple[str, int]:
    """The canonical id and the lease of a session id given in hex."""
    if text is None or not text.strip():
        raise InvalidArgument(
            f"{field} is required: the id returned by POST /v1/sessions", field=field
        )
    try:
        lease = int(text.strip(), 16)
    except ValueError:
        raise InvalidArgument(
            f"{field} must be a session id in hex, got {text!r}", field=field
        ) from None
    if not 0 < lease < 2**63:
        raise InvalidArgument(f"{field} is out of range", field=field)
    return session_id(lease), lease


def check_ttl(text: str, field: str = "ttl") -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise InvalidArgument(f"{field}: {exc}", field=field) from None
    if not MIN_TTL <= seconds <= MAX_TTL:
        raise InvalidArgument(
            f"{field} must be between {format_duration(MIN_TTL)} and {format_duration(MAX_TTL)}",
            field=field,
        )
    return seconds


def check_session_name(value: str) -> str:
    if len(value) > MAX_SESSION_NAME or any(ord(c) < 0x20 for c in value):
        raise InvalidArgument(
            f"name must be at most {MAX_SESSION_NAME} printable characters", field="name"
        )
    return value


def check_value(value: str) -> str:
    if len(value.encode()) > MAX_VALUE:
        raise InvalidArgument(f"value must be at most {MAX_VALUE} bytes", field="value")
    return value


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    return limit


# Codecs.

_encoder = msgspec.json.Encoder()
_entry = msgspec.json.Decoder(Entry)
_record = msgspec.json.Decoder(SessionRecord)
_limit = msgspec.json.Decoder(Limit)


def encode(value: Entry | SessionRecord | Limit) -> bytes:
    return _encoder.encode(value)


def decode_entry(raw: bytes, session: str) -> Entry:
    try:
        return _entry.decode(raw)
    except msgspec.DecodeError:
        return Entry(session=session)


def decode_record(raw: bytes, session: str) -> SessionRecord:
    try:
        return _record.decode(raw)
    except msgspec.DecodeError:
        return SessionRecord(id=session, name="", ttl=0.0, created=0.0)


def decode_limit(raw: bytes) -> int | None:
    try:
        return _limit.decode(raw).limit
    except msgspec.DecodeError:
        return None


# Errors a client can meet.


class SessionNotFound(NotFound):
    code = "session_not_found"

    def __init__(self, session: str) -> None:
        super().__init__(f"session {session} does not exist or has expired", session=session)


class Busy(Conflict):
    """The wait ran out while someone else held what was asked for; the details
    name the holder (`holder=` or `leader=`)."""


class NotHolder(Conflict):
    code = "not_holder"


class LimitMismatch(Conflict):
    code = "limit_mismatch"


class Withdrawn(Conflict):
    """The contender's key vanished while it waited (released by another call)."""

    code = "withdrawn"
