"""Kubernetes label selectors and the labels they match (pure).

Grammar (a comma means AND; blanks around tokens are ignored):

    selector    := requirement ( "," requirement )*
    requirement := "!" KEY                          label absent
                 | KEY                              label present
                 | KEY ( "=" | "==" | "!=" ) VALUE
                 | KEY ( "in" | "notin" ) "(" VALUE ( "," VALUE )* ")"

KEY is an optional DNS-subdomain prefix and "/" followed by a name of 1-63
letters, digits, '-', '_' or '.', starting and ending with a letter or digit;
VALUE is empty or such a name (`k in ()` is the set of the empty value). As
in Kubernetes, `!=` and `notin` also match instances that do not carry the
label at all.

Theory of operation: `parse_selector` tokenises and parses in one pass and
raises `SelectorError` with the 1-based column of the first problem;
`Selector.matches(labels)` is a pure function of a label mapping;
`str(selector)` is a canonical form that parses back to an equal selector.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from crossway.core.errors import InvalidArgument

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?"
KEY = re.compile(rf"^(?:{_PREFIX}/)?{_NAME}$")
VALUE = re.compile(rf"^(?:{_NAME})?$")
_WORD = re.compile(r"[A-Za-z0-9_./-]+")
_SYMBOLS = ("==", "!=", "=", "!", "(", ")", ",")


class SelectorError(InvalidArgument):
    code = "invalid_selector"

    def __init__(self, message: str, *, text: str, column: int, field: str = "selector") -> None:
        super().__init__(f"{message} at column {column} of {text!r}", field=field, column=column)
        self.column = column


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!":
            return value is None
        if self.op in ("=", "in"):
            return value is not None and value in self.values
        return value is None or value not in self.values

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["word", "symbol", "end"]
    text: str
    column: int


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        word = _WORD.match(text, i)
        if word is not None:
            out.append(_Token("word", word.group(), i + 1))
            i = word.end()
            continue
        symbol = next((s for s in _SYMBOLS if text.startswith(s, i)), None)
        if symbol is None:
            raise SelectorError(f"unexpected character {text[i]!r}", text=text, column=i + 1)
        out.append(_Token("symbol", symbol, i + 1))
        i += len(symbol)
    out.append(_Token("end", "", len(text) + 1))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0

    @property
    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def fail(self, message: str, token: _Token) -> SelectorError:
        return SelectorError(message, text=self.text, column=token.column)

    def expect_symbol(self, symbol: str) -> None:
        token = self.take()
        if token.kind != "symbol" or token.text != symbol:
            raise self.fail(f"expected {symbol!r}, found {_describe(token)}", token)

    def selector(self) -> Selector:
        requirements = [self.requirement()]
        while self.peek.kind == "symbol" and self.peek.text == ",":
            self.take()
            requirements.append(self.requirement())
        if self.peek.kind != "end":
            raise self.fail(f"expected ',' or the end, found {_describe(self.peek)}", self.peek)
        return Selector(tuple(requirements))

    def requirement(self) -> Requirement:
        if self.peek.kind == "symbol" and self.peek.text == "!":
            self.take()
            return Requirement(self.key(), "!")
        key = self.key()
        token = self.peek
        if token.kind == "symbol" and token.text in ("=", "==", "!="):
            self.take()
            return Requirement(key, "!=" if token.text == "!=" else "=", (self.value(),))
        if token.kind == "word" and token.text in ("in", "notin"):
            self.take()
            op: Operator = "in" if token.text == "in" else "notin"
            return Requirement(key, op, self.value_set())
        if token.kind == "end" or (token.kind == "symbol" and token.text == ","):
            return Requirement(key, "exists")
        raise self.fail(f"expected an operator after {key!r}, found {_describe(token)}", token)

    def key(self) -> str:
        token = self.take()
        if token.kind != "word":
            raise self.fail(f"expected a label key, found {_describe(token)}", token)
        if not KEY.match(token.text):
            raise self.fail(f"{token.text!r} is not a valid label key", token)
        return token.text

    def value(self) -> str:
        token = self.peek
        if token.kind != "word":
            return ""  # `k=` selects the empty value, as in Kubernetes
        self.take()
        if not VALUE.match(token.text):
            raise self.fail(f"{token.text!r} is not a valid label value", token)
        return token.text

    def value_set(self) -> tuple[str, ...]:
        self.expect_symbol("(")
        values = [self.value()]  # `()` is the set of the empty value, as in Kubernetes
        while self.peek.kind == "symbol" and self.peek.text == ",":
            self.take()
            values.append(self.value())
        self.expect_symbol(")")
        return tuple(sorted(set(values)))


def _describe(token: _Token) -> str:
    return "the end" if token.kind == "end" else repr(token.text)


def parse_selector(text: str, *, field: str = "selector") -> Selector:
    """Parse `text`; `SelectorError` (400) naming the column of the first problem.

    An empty selector is refused: it would select everything, which is a
    release, not a gray release.
    """
    if not text.strip():
        raise SelectorError("a selector must not be empty", text=text, column=1, field=field)
    try:
        return _Parser(text).selector()
    except SelectorError as exc:
        exc.details["field"] = field
        raise


def parse_labels(text: str, *, field: str = "labels") -> dict[str, str]:
    """`zone=eu-1,canary=true` as a dict; `InvalidArgument` for a bad pair."""
    labels: dict[str, str] = {}
    for part in text.split(","):
        pair = part.strip()
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not KEY.match(key) or not VALUE.match(value):
            raise InvalidArgument(
                f"{field}: {pair!r} is not a label (expected key=value, e.g. zone=eu-1)",
                field=field,
            )
        labels[key] = value
    return labels
