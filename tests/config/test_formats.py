"""Format choice and content validation with line and column."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.config.formats import (
    ContentInvalid,
    check_content,
    choose_format,
    decode_text,
    format_of_extension,
    parse_format,
)
from crossway.config.model import FORMATS, Format
from crossway.core.errors import InvalidArgument

VALID = {
    "yaml": "server:\n  port: 8080\n---\nspring:\n  profiles: prod\n",
    "json": '{"server": {"port": 8080}}',
    "toml": '[server]\nport = 8080\nname = "orders"\n',
    "properties": "server.port=8080\nname = orders\n",
    "text": "anything \x00 at all\n",
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_content_passes(fmt: Format) -> None:
    check_content(VALID[fmt], fmt)


@pytest.mark.parametrize(
    ("fmt", "content", "line", "column", "fragment"),
    [
        ("yaml", "server:\n  port: 8080\n bad: [1, 2\n", 3, 2, "YAML"),
        ("yaml", "a: 1\nb: : 2\n", 2, 4, "mapping values are not allowed"),
        ("yaml", "key: !!python/object:os.system x\n", 1, 6, "YAML"),
        ("yaml", "a: 1\n---\nb: [\n", 4, 1, "YAML"),
        ("json", '{"a": 1,\n "b": }', 2, 7, "Expecting value"),
        ("json", "", 1, 1, "JSON"),
        ("toml", "[server]\nport = 8080\nport = 9090\n", 3, 12, "TOML"),
        ("toml", "a = \n", 1, 5, "TOML"),
        ("properties", "a=1\nb=\\u00zz\n", 2, 3, "\\uXXXX"),
    ],
)
def test_invalid_content_names_line_and_column(
    fmt: Format, content: str, line: int, column: int, fragment: str
) -> None:
    with pytest.raises(ContentInvalid) as caught:
        check_content(content, fmt)
    error = caught.value
    assert (error.line, error.column) == (line, column), error.message
    assert fragment in error.message
    body = error.to_json()["error"]
    assert body["code"] == "invalid_content"
    assert (body["line"], body["column"], body["format"]) == (line, column, fmt)
    assert error.status == 400


def test_absurd_nesting_is_refused_not_crashed() -> None:
    for fmt, content in (("json", "[" * 100_000), ("yaml", "[" * 100_000)):
        with pytest.raises(ContentInvalid):
            check_content(content, fmt)  # type: ignore[arg-type]


def test_decode_text_points_at_the_bad_byte() -> None:
    assert decode_text("é".encode(), "text") == "é"
    with pytest.raises(ContentInvalid) as caught:
        decode_text(b"a: 1\nb: \xc3\xa9\xff\n", "yaml")
    assert (caught.value.line, caught.value.column) == (2, 5)


@pytest.mark.parametrize(
    ("explicit", "content_type", "key", "expected"),
    [
        ("json", "application/yaml", "x.toml", "json"),
        ("YAML", None, "x", "yaml"),
        (None, "application/json; charset=utf-8", "x.yaml", "json"),
        (None, "application/x-yaml", "x", "yaml"),
        (None, "text/yaml", "x", "yaml"),
        (None, "application/toml", "x", "toml"),
        (None, "text/x-java-properties", "x", "properties"),
        (None, "text/plain", "x.yaml", "text"),
        (None, "application/x-www-form-urlencoded", "orders.yml", "yaml"),
        (None, "application/octet-stream", "app.properties", "properties"),
        (None, None, "settings.TOML", "toml"),
        (None, None, "README", None),
        (None, None, ".yaml", None),
    ],
)
def test_choose_format(
    explicit: str | None, content_type: str | None, key: str, expected: str | None
) -> None:
    assert choose_format(explicit=explicit, content_type=content_type, key=key) == expected


def test_unknown_format_is_refused() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_format("xml")
    assert caught.value.details["field"] == "format"
    assert format_of_extension("a.json") == "json"


@given(st.sampled_from(FORMATS), st.text(alphabet="{}[]:,=\"'\\ \n\t#!-abc123u.", max_size=40))
def test_any_content_is_accepted_or_refused_with_a_position(fmt: Format, content: str) -> None:
    error = _raised(content, fmt)
    if error is not None and error.line is not None:
        assert 1 <= error.line <= content.count("\n") + 2
        assert error.column is not None
        assert error.column >= 1


def _raised(content: str, fmt: Format) -> ContentInvalid | None:
    try:
        check_content(content, fmt)
    except ContentInvalid as exc:
        return exc
    return None
