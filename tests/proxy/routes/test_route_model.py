import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.core.errors import InvalidArgument
from crossway.proxy.routes import Backend, Route, RouteMatch, decode_route, encode_route

MINIMAL = (
    b'{"match": {"path_prefix": "/orders"}, "backends": [{"service": "orders", "weight": 90},'
    b' {"service": "orders-canary", "weight": 10}], "timeout": "5s", "retries": {"attempts": 2}}'
)


def test_the_minimal_document_works_as_written() -> None:
    route = decode_route(MINIMAL)
    assert route.match.path_prefix == "/orders"
    assert [(b.service, b.weight) for b in route.backends] == [
        ("orders", 90),
        ("orders-canary", 10),
    ]
    assert route.timeout == "5s"
    assert route.retries.attempts == 2


def test_encoding_round_trips_and_omits_defaults() -> None:
    route = decode_route(MINIMAL)
    assert decode_route(encode_route(route)) == route
    assert b"balancer" not in encode_route(route)


def _field_of(raw: str) -> str:
    with pytest.raises(InvalidArgument) as caught:
        decode_route(raw)
    field: str = caught.value.details["field"]
    return field


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"backends": [{"service": "a", "weight": -1}]}', "$.backends[0].weight"),
        ('{"match": {"pth": "/"}, "backends": [{"service": "a"}]}', "$.match.pth"),
        ('{"match": {"path_regex": "("}, "backends": [{"service": "a"}]}', "$.match.path_regex"),
        ('{"match": {"path": "x"}, "backends": [{"service": "a"}]}', "$.match.path"),
        (
            '{"match": {"path": "/a", "path_prefix": "/b"}, "backends": [{"service": "a"}]}',
            "$.match.path_prefix",
        ),
        ('{"match": {"host": "a*b"}, "backends": [{"service": "a"}]}', "$.match.host"),
        ('{"match": {"methods": ["get"]}, "backends": [{"service": "a"}]}', "$.match.methods[0]"),
        (
            '{"match": {"headers": [{"name": "x y"}]}, "backends": [{"service": "a"}]}',
            "$.match.headers[0].name",
        ),
        ("{}", "$.backends"),
        ('{"backends": [{"service": "a", "weight": 0}]}', "$.backends"),
        ('{"backends": [{"service": "a"}], "redirect": {}}', "$.redirect"),
        ('{"redirect": {"status": 200}}', "$.redirect.status"),
        ('{"direct_response": {"status": 99}}', "$.direct_response.status"),
        ('{"backends": [{"service": "a"}], "timeout": "soon"}', "$.timeout"),
        ('{"backends": [{"service": "a"}], "retries": {"attempts": 0}}', "$.retries.attempts"),
        (
            '{"backends": [{"service": "a"}], "retries": {"conditions": ["x"]}}',
            "$.retries.conditions[0]",
        ),
        (
            '{"backends": [{"service": "a"}], "mirror": {"service": "b", "percent": 101}}',
            "$.mirror.percent",
        ),
        (
            '{"backends": [{"service": "a"}], "fault": {"abort": {"percent": -1}}}',
            "$.fault.abort.percent",
        ),
        ('{"backends": [{"service": "a"}], "rewrite": {"prefix": "/"}}', "$.rewrite.prefix"),
        (
            '{"match": {"path_regex": "/(?P<id>\\\\d+)"}, "backends": [{"service": "a"}],'
            ' "rewrite": {"path": "/x/{nope}"}}',
            "$.rewrite.path",
        ),
        (
            '{"backends": [{"service": "a"}], "request_headers": {"set": {"a b": "1"}}}',
            "$.request_headers.set.a b",
        ),
        (
            '{"backends": [{"service": "a"}], "header_routes": [{"headers": [{"name": "x"}],'
            ' "backends": []}]}',
            "$.header_routes[0].backends",
        ),
        ("[1]", "$"),
        ("not json", "$"),
    ],
)
def test_a_bad_document_names_the_field(raw: str, field: str) -> None:
    assert _field_of(raw) == field


def test_routes_built_in_code_are_checked_too() -> None:
    with pytest.raises(InvalidArgument):
        Route(match=RouteMatch(path="nope"), backends=(Backend(service="a"),))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 200) | st.sampled_from(["", "/a", "5s", "x", "*"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "match",
                    "path",
                    "path_prefix",
                    "backends",
                    "service",
                    "weight",
                    "retries",
                    "attempts",
                    "redirect",
                    "status",
                    "host",
                    "headers",
                    "name",
                    "mirror",
                    "percent",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_any_json_is_a_route_or_an_invalid_argument_naming_a_field(doc: object) -> None:
    field = ""
    try:
        route = decode_route(json.dumps(doc))
    except InvalidArgument as exc:
        field = str(exc.details["field"])
    if field:
        assert field.startswith("$")
    else:
        assert decode_route(encode_route(route)) == route
