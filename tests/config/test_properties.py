"""Java .properties: the rules of Properties.load, errors, and a fuzzed round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.config.properties import PropertiesError, parse_properties


def test_separators_and_blanks() -> None:
    text = "a=1\nb: 2\nc 3\nd\t=\t4\ne\n  f = 5  \ng==6\nh:=7\n"
    assert parse_properties(text) == {
        "a": "1",
        "b": "2",
        "c": "3",
        "d": "4",
        "e": "",
        "f": "5  ",
        "g": "=6",
        "h": "=7",
    }


def test_comments_and_blank_lines() -> None:
    text = "# comment\n! also a comment\n   # indented comment\n\n   \nkey=value # not a comment\n"
    assert parse_properties(text) == {"key": "value # not a comment"}


def test_continuations() -> None:
    text = "fruits = apple, \\\n         banana, \\\n    # not a comment\\\n\tpear\nnext=1\n"
    assert parse_properties(text) == {
        "fruits": "apple, banana, # not a comment pear".replace("comment pear", "commentpear"),
        "next": "1",
    }


def test_even_backslashes_do_not_continue() -> None:
    assert parse_properties("path=c:\\\\\nnext=1") == {"path": "c:\\", "next": "1"}


def test_comment_ending_in_backslash_does_not_continue() -> None:
    assert parse_properties("# note \\\nkey=1") == {"key": "1"}


def test_continuation_at_end_of_input() -> None:
    assert parse_properties("key=value\\") == {"key": "value"}


def test_escapes() -> None:
    text = "tab=a\\tb\nnl=a\\nb\nu=caf\\u00e9\nplain=\\q\\=\\:\nkey\\ with\\ spaces=x\nk\\=eq=y\n"
    assert parse_properties(text) == {
        "tab": "a\tb",
        "nl": "a\nb",
        "u": "café",
        "plain": "q=:",
        "key with spaces": "x",
        "k=eq": "y",
    }


def test_line_endings() -> None:
    assert parse_properties("a=1\r\nb=2\rc=3\n") == {"a": "1", "b": "2", "c": "3"}


def test_later_duplicate_wins() -> None:
    assert parse_properties("a=1\na=2") == {"a": "2"}


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("a=\\u12", 1, 3),
        ("ok=1\nbad=x\\uZZZZ", 2, 6),
        ("ok=1\nlong=first \\\n  then \\u00g1", 3, 8),
        ("\\u00=x", 1, 1),
    ],
)
def test_bad_unicode_escape_names_its_line(text: str, line: int, column: int) -> None:
    with pytest.raises(PropertiesError) as caught:
        parse_properties(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert "\\uXXXX" in caught.value.problem


def _escape(text: str, *, key: bool) -> str:
    out = []
    for i, char in enumerate(text):
        if char in "\\=:#!" or (char == " " and (key or i == 0)):
            out.append("\\" + char)
        elif char in "\t\n\r\f":
            out.append({"\t": "\\t", "\n": "\\n", "\r": "\\r", "\f": "\\f"}[char])
        elif ord(char) < 0x20 or ord(char) > 0x7E:
            units = char.encode("utf-16-be", "surrogatepass")
            out.extend(f"\\u{units[j]:02x}{units[j + 1]:02x}" for j in range(0, len(units), 2))
        else:
            out.append(char)
    return "".join(out)


_text = st.text(st.characters(codec="utf-16", exclude_categories=["Cs"]), max_size=12)


@given(st.dictionaries(_text.filter(bool), _text, max_size=6), st.sampled_from(["=", ":", " = "]))
def test_round_trip(entries: dict[str, str], separator: str) -> None:
    text = "\n".join(
        f"{_escape(k, key=True)}{separator}{_escape(v, key=False)}" for k, v in entries.items()
    )
    assert parse_properties(text) == entries


@given(st.text(max_size=60))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    error: PropertiesError | None = None
    try:
        parse_properties(text)
    except PropertiesError as exc:
        error = exc
    if error is not None:
        assert error.line >= 1
        assert error.column >= 1
