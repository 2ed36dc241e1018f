"""Checks for validated documents (routes, call policies, …): each failure is an
`InvalidArgument` whose `field` is the JSON path of the value at fault, and
whose message starts with that path, so the control plane's 400 and a
`crossway.yaml` error both point at it."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from crossway.core.durations import parse_duration
from crossway.core.errors import InvalidArgument

T = TypeVar("T")


def field_error(field: str, message: str) -> InvalidArgument:
    """`$.retries.attempts`, "must be …" -> "retries.attempts: must be …"."""
    return InvalidArgument(f"{field.removeprefix('$.')}: {message}", field=field)


def duration_at(value: str | float, field: str, *, positive: bool = False) -> float:
    """`value` ("5s", "250ms", a number) in seconds; an error naming `field`
    when it does not parse, or (with `positive`) is not above zero."""
    try:
        result = parse_duration(value)
    except ValueError as exc:
        raise field_error(field, str(exc)) from None
    if positive and result <= 0:
        raise field_error(field, "must be longer than zero")
    return result


def within(value: float, field: str, low: float, high: float) -> None:
    """An error naming `field` unless low <= value <= high."""
    if not low <= value <= high:
        raise field_error(
            field, f"must be between {readable(low)} and {readable(high)}, got {readable(value)}"
        )


def readable(value: float) -> str:
    # 1000000, not 1e+06: these messages are read by people fixing a file.
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


_AT_PATH = re.compile(r" - at `(\$[^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]*)`")


def field_of(message: str) -> str:
    """The JSON path a msgspec validation message is about, down to a named
    field ("unknown field `x` - at `$.match`" is about `$.match.x`)."""
    at = _AT_PATH.search(message)
    path = at.group(1) if at else "$"
    named = _NAMED_FIELD.search(message)
    return f"{path}.{named.group(1)}" if named else path


def decode_document(decoder: msgspec.json.Decoder[T], raw: bytes | str) -> T:
    """A validated document from JSON; InvalidArgument naming the field at fault."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise InvalidArgument(message, field=field_of(message)) from None
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"not valid JSON: {exc}", field="$") from None


def convert_document(obj: object, kind: type[T]) -> T:
    """A validated document from already-parsed data (YAML); errors as `decode_document`."""
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        raise InvalidArgument(message, field=field_of(message)) from None
