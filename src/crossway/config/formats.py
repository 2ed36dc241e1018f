"""Content formats: which one a request means, and whether the content parses.

Theory of operation
- A write names its format explicitly (`?format=`), or through its
  Content-Type, or — when neither says anything — by the key's file
  extension, then the entry's current format, then plain text
  (`choose_format`). Generic types that HTTP tools send by default
  (`application/x-www-form-urlencoded` from `curl -d`,
  `application/octet-stream`) count as "said nothing".
- `check_content` parses the content with the format's own parser and, on
  failure, raises `ContentInvalid` carrying the 1-based `line` and `column` of
  the problem, so nothing unparseable is ever stored. The parsed value is
  thrown away: the config center stores exactly the bytes it was given.
- Content is UTF-8 text in every format; bytes that do not decode are refused
  with the position of the first bad byte.

Invariant: `check_content` raises `ContentInvalid` or returns; no parser
exception (including RecursionError on absurd nesting) escapes it.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import yaml

from crossway.config.model import FORMATS, Format
from crossway.config.properties import PropertiesError, parse_properties
from crossway.core.errors import InvalidArgument

_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")

CONTENT_TYPES: dict[str, Format] = {
    "application/json": "json",
    "application/yaml": "yaml",
    "application/x-yaml": "yaml",
    "text/yaml": "yaml",
    "text/x-yaml": "yaml",
    "application/toml": "toml",
    "text/x-java-properties": "properties",
}
MEDIA_TYPES: dict[Format, str] = {
    "yaml": "application/yaml",
    "json": "application/json",
    "toml": "application/toml",
    "properties": "text/x-java-properties",
    "text": "text/plain",
}
UNSPECIFIC_TYPES = frozenset({"", "application/x-www-form-urlencoded", "application/octet-stream"})
EXTENSIONS: dict[str, Format] = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".toml": "toml",
    ".properties": "properties",
}
NAMES: dict[Format, str] = {
    "yaml": "YAML",
    "json": "JSON",
    "toml": "TOML",
    "properties": "Java properties",
    "text": "UTF-8 text",
}


class ContentInvalid(InvalidArgument):
    """Content that does not parse as its format; `line`/`column` are 1-based
    (None only when the parser could not say where)."""

    code = "invalid_content"

    def __init__(self, message: str, *, fmt: Format, line: int | None, column: int | None) -> None:
        where = f" (line {line}, column {column})" if line is not None else ""
        super().__init__(f"{message}{where}", format=fmt, line=line, column=column)
        self.format = fmt
        self.line = line
        self.column = column
        self.problem = message


def parse_format(value: str) -> Format:
    """A `?format=` value; `InvalidArgument` (400) for an unknown one."""
    for fmt in FORMATS:
        if value.lower() == fmt:
            return fmt
    raise InvalidArgument(f"format {value!r} is not one of {', '.join(FORMATS)}", field="format")


def format_of_extension(name: str) -> Format | None:
    dot = name.rfind(".")
    return EXTENSIONS.get(name[dot:].lower()) if dot > 0 else None


def choose_format(*, explicit: str | None, content_type: str | None, key: str) -> Format | None:
    """The format a write means, or None when nothing in the request or the
    key's name says (the caller then keeps the entry's current format, else
    text); see the module header for the order."""
    if explicit:
        return parse_format(explicit)
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in UNSPECIFIC_TYPES:
        return CONTENT_TYPES.get(media, "text")
    return format_of_extension(key)


def decode_text(raw: bytes, fmt: Format) -> str:
    """`raw` as UTF-8 text, or `ContentInvalid` at the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
        raise ContentInvalid(
            "content is not valid UTF-8", fmt=fmt, line=line, column=column
        ) from None


def check_content(content: str, fmt: Format) -> None:
    """Raise `ContentInvalid` unless `content` parses as `fmt`."""
    try:
        _CHECKERS[fmt](content)
    except RecursionError:
        raise ContentInvalid(
            f"content is not valid {NAMES[fmt]}: nested too deeply", fmt=fmt, line=None, column=None
        ) from None


def _check_yaml(content: str) -> None:
    try:
        # Every document of a multi-document stream (Spring profiles use `---`).
        for _ in yaml.load_all(content, Loader=_YAML_LOADER):
            pass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        raise ContentInvalid(
            f"content is not valid YAML: {problem}", fmt="yaml", line=line, column=column
        ) from None
    except yaml.YAMLError as exc:
        # Reader errors (control characters) carry a character offset, not a mark.
        position = getattr(exc, "position", None)
        line, column = _line_col(content, position) if position is not None else (None, None)
        raise ContentInvalid(
            f"content is not valid YAML: {_first_line(str(exc))}",
            fmt="yaml",
            line=line,
            column=column,
        ) from None


def _check_json(content: str) -> None:
    try:
        json.loads(content)
    except json.JSONDecodeError as exc:
        raise ContentInvalid(
            f"content is not valid JSON: {exc.msg}", fmt="json", line=exc.lineno, column=exc.colno
        ) from None


def _check_toml(content: str) -> None:
    try:
        tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        text = str(exc)
        line, column = getattr(exc, "lineno", None), getattr(exc, "colno", None)
        found = _TOML_POSITION.search(text)
        if line is None and found is not None:
            line, column = int(found.group(1)), int(found.group(2))
        if line is None and "end of document" in text:
            line, column = _line_col(content, len(content))
        problem = _TOML_POSITION.sub("", text).replace("(at end of document)", "").strip()
        raise ContentInvalid(
            f"content is not valid TOML: {problem}", fmt="toml", line=line, column=column
        ) from None


def _check_properties(content: str) -> None:
    try:
        parse_properties(content)
    except PropertiesError as exc:
        raise ContentInvalid(
            f"content is not valid Java properties: {exc.problem}",
            fmt="properties",
            line=exc.line,
            column=exc.column,
        ) from None


def _check_text(content: str) -> None:
    return None


_CHECKERS = {
    "yaml": _check_yaml,
    "json": _check_json,
    "toml": _check_toml,
    "properties": _check_properties,
    "text": _check_text,
}


def _line_col(content: str, position: int) -> tuple[int, int]:
    before = content[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "invalid content"
