"""Java `.properties` files, read the way `java.util.Properties.load` reads them.

Theory of operation (the rules of the Properties javadoc, in order)
1. The text is split into natural lines at `\\n`, `\\r` or `\\r\\n`.
2. A natural line that is blank, or whose first non-blank character is `#`
   or `!`, is a comment — unless it continues the previous line.
3. A line ending in an odd number of backslashes continues on the next
   natural line: the backslash and the line break go, and so does the
   leading white space (space, tab, form feed) of the next line.
4. In the joined logical line the key runs from the first non-blank
   character to the first unescaped `=`, `:` or blank; then blanks, at most
   one `=` or `:`, and blanks again are skipped; the rest is the value.
5. In keys and values `\\t \\n \\r \\f` and `\\uXXXX` are escapes, and a
   backslash before any other character stands for that character.

Java refuses exactly one thing — a malformed `\\uXXXX` — and so do we,
naming its natural line and column. A later duplicate key wins, as in Java.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

BLANKS = " \t\f"
_SIMPLE_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


class PropertiesError(ValueError):
    def __init__(self, problem: str, *, line: int, column: int) -> None:
        super().__init__(f"{problem} (line {line}, column {column})")
        self.problem = problem
        self.line = line
        self.column = column


@dataclass(slots=True)
class _Logical:
    """One logical line; `where[i]` is the (line, column) of `text[i]`."""

    text: list[str] = field(default_factory=list)
    where: list[tuple[int, int]] = field(default_factory=list)


def parse_properties(text: str) -> dict[str, str]:
    """Every key and value of `text`; `PropertiesError` for a bad `\\uXXXX`."""
    result: dict[str, str] = {}
    for logical in _logical_lines(text):
        key, value = _split(logical)
        result[key] = value
    return result


def _natural_lines(text: str) -> Iterator[tuple[int, str]]:
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    yield from enumerate(normalised.split("\n"), start=1)


def _logical_lines(text: str) -> Iterator[_Logical]:
    current: _Logical | None = None
    for number, line in _natural_lines(text):
        start = len(line) - len(line.lstrip(BLANKS))
        if current is None:
            if start == len(line) or line[start] in "#!":
                continue
            current = _Logical()
        continues = _ends_in_odd_backslashes(line)
        body = line[start : len(line) - 1] if continues else line[start:]
        current.text.extend(body)
        current.where.extend((number, start + i + 1) for i in range(len(body)))
        if not continues:
            yield current
            current = None
    if current is not None:
        yield current  # a continuation at the very end joins nothing


def _ends_in_odd_backslashes(line: str) -> bool:
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _split(logical: _Logical) -> tuple[str, str]:
    chars, i = logical.text, 0
    while i < len(chars) and not (chars[i] in "=:" or chars[i] in BLANKS):
        i += 2 if chars[i] == "\\" else 1
    key_end = min(i, len(chars))
    while i < len(chars) and chars[i] in BLANKS:
        i += 1
    if i < len(chars) and chars[i] in "=:":
        i += 1
    while i < len(chars) and chars[i] in BLANKS:
        i += 1
    return _unescape(logical, 0, key_end), _unescape(logical, i, len(chars))


def _unescape(logical: _Logical, start: int, end: int) -> str:
    chars, out, i = logical.text, [], start
    while i < end:
        char = chars[i]
        if char != "\\" or i + 1 >= end:
            # A lone backslash at the very end stands for nothing, as in Java.
            out.append("" if char == "\\" else char)
            i += 1
            continue
        escaped = chars[i + 1]
        if escaped == "u":
            out.append(_unicode_escape(logical, i, end))
            i += 6
            continue
        out.append(_SIMPLE_ESCAPES.get(escaped, escaped))
        i += 2
    return _join_surrogates("".join(out))


def _join_surrogates(text: str) -> str:
    # `\ud83d\ude00` is one character in Java (UTF-16 code units); make it one here.
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _unicode_escape(logical: _Logical, at: int, end: int) -> str:
    digits = logical.text[at + 2 : min(at + 6, end)]
    if len(digits) != 4 or not all(d in HEX_DIGITS for d in digits):
        line, column = logical.where[at]
        raise PropertiesError(
            "malformed \\uXXXX escape: expected four hex digits after \\u", line=line, column=column
        )
    return chr(int("".join(digits), 16))
