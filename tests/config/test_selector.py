"""Label selectors: the Kubernetes grammar, matching, errors and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossway.config.selector import (
    Requirement,
    Selector,
    SelectorError,
    parse_labels,
    parse_selector,
)
from crossway.core.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("zone=eu-1", {"zone": "eu-1"}, True),
        ("zone==eu-1", {"zone": "eu-1"}, True),
        ("zone=eu-1", {"zone": "us-1"}, False),
        ("zone=eu-1", {}, False),
        ("zone!=eu-1", {"zone": "us-1"}, True),
        ("zone!=eu-1", {}, True),
        ("zone!=eu-1", {"zone": "eu-1"}, False),
        ("zone in (eu-1, eu-2)", {"zone": "eu-2"}, True),
        ("zone in (eu-1,eu-2)", {"zone": "us-1"}, False),
        ("zone in (eu-1)", {}, False),
        ("zone notin (eu-1)", {}, True),
        ("zone notin (eu-1,eu-2)", {"zone": "eu-1"}, False),
        ("canary", {"canary": "false"}, True),
        ("canary", {}, False),
        ("!canary", {}, True),
        ("!canary", {"canary": "true"}, False),
        ("zone=eu-1,canary=true", {"zone": "eu-1", "canary": "true"}, True),
        ("zone=eu-1, canary=true", {"zone": "eu-1"}, False),
        ("tier=", {"tier": ""}, True),
        ("tier in ()", {"tier": ""}, True),
        ("tier in ()", {"tier": "x"}, False),
        ("example.com/team=payments", {"example.com/team": "payments"}, True),
        ("  version in ( v1 , v2 ) ,  !legacy ", {"version": "v1"}, True),
        ("in=x", {"in": "x"}, True),
    ],
)
def test_matching(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ("", 1, "must not be empty"),
        ("   ", 1, "must not be empty"),
        ("zone=eu-1,", 11, "expected a label key"),
        (",zone", 1, "expected a label key"),
        ("zone in (a,", 12, "expected ')'"),
        ("zone in (a", 11, "expected ')'"),
        ("zone in a", 9, "expected '('"),
        ("zone ~ a", 6, "unexpected character"),
        ("zone eu", 6, "expected an operator"),
        ("zone=a b", 8, "expected ',' or the end"),
        ("-zone=a", 1, "not a valid label key"),
        ("zone=a/b", 6, "not a valid label value"),
        ("!", 2, "expected a label key"),
        ("zone=" + "x" * 64, 6, "not a valid label value"),
    ],
)
def test_errors_name_the_column(text: str, column: int, fragment: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse_selector(text, field="beta")
    assert caught.value.column == column
    assert fragment in caught.value.message
    assert caught.value.details["field"] == "beta"
    assert caught.value.status == 400


def test_canonical_form() -> None:
    selector = parse_selector("zone in (b, a, b), canary == true, !old, x")
    assert str(selector) == "zone in (a,b),canary=true,!old,x"


def test_labels() -> None:
    assert parse_labels("zone=eu-1, canary=true,,") == {"zone": "eu-1", "canary": "true"}
    assert parse_labels("") == {}
    assert parse_labels("tier=") == {"tier": ""}
    for bad in ("zone", "zone=eu 1", "=x", "a b=c"):
        with pytest.raises(InvalidArgument):
            parse_labels(bad)


_name = st.from_regex(r"\A[a-z0-9]([a-z0-9_.-]{0,8}[a-z0-9])?\Z")
_value = st.one_of(st.just(""), _name)
_requirement = st.one_of(
    st.builds(Requirement, _name, st.sampled_from(["exists", "!"])),
    st.builds(
        lambda k, op, v: Requirement(k, op, (v,)),
        _name,
        st.sampled_from(["=", "!="]),
        _value,
    ),
    st.builds(
        lambda k, op, vs: Requirement(k, op, tuple(sorted(set(vs)))),
        _name,
        st.sampled_from(["in", "notin"]),
        st.lists(_value, min_size=1, max_size=4),
    ),
)
_selectors = st.lists(_requirement, min_size=1, max_size=5).map(lambda rs: Selector(tuple(rs)))
_labels = st.dictionaries(st.sampled_from(["a", "b", "zone", "x.y", "k1"]), _value, max_size=4)


@given(_selectors)
def test_round_trip(selector: Selector) -> None:
    assert parse_selector(str(selector)) == selector


@given(_selectors, _labels)
def test_matches_by_definition(selector: Selector, labels: dict[str, str]) -> None:
    def holds(r: Requirement) -> bool:
        present = r.key in labels
        if r.op == "exists":
            return present
        if r.op == "!":
            return not present
        if r.op in ("=", "in"):
            return present and labels[r.key] in r.values
        return not present or labels[r.key] not in r.values

    assert selector.matches(labels) == all(holds(r) for r in selector.requirements)


@given(st.text(alphabet="az=!(), in-./_\t01", max_size=30))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    error: SelectorError | None = None
    try:
        selector = parse_selector(text)
    except SelectorError as exc:
        error = exc
    if error is not None:
        assert 1 <= error.column <= len(text) + 1
    else:
        assert parse_selector(str(selector)) == selector
