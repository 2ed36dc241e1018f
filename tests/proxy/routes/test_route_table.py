import random

from hypothesis import given, settings
from hypothesis import strategies as st

from crossway.proxy.routes import Backend, HeaderMatch, QueryMatch, Route, RouteMatch
from crossway.proxy.routes.predicates import prefix_matches
from crossway.proxy.routes.table import RouteTable, reference_match
from crossway.proxy.routes.trie import PrefixTrie

BACKENDS = (Backend(service="svc"),)


def route(**match: object) -> Route:
    return Route(match=RouteMatch(**match), backends=BACKENDS)  # type: ignore[arg-type]


def name_of(table: RouteTable, method: str, path: str, **kw: object) -> str | None:
    found = table.match(method, path, **kw)  # type: ignore[arg-type]
    return found.name if found is not None else None


def test_the_longest_prefix_wins_on_segment_boundaries() -> None:
    table = RouteTable(
        {
            "root": route(path_prefix="/"),
            "api": route(path_prefix="/api"),
            "orders": route(path_prefix="/api/orders"),
        }
    )
    assert name_of(table, "GET", "/api/orders/7") == "orders"
    assert name_of(table, "GET", "/api/orders") == "orders"
    assert name_of(table, "GET", "/api/ordersx") == "api"
    assert name_of(table, "GET", "/apix") == "root"


def test_exact_beats_regex_beats_prefix() -> None:
    table = RouteTable(
        {
            "exact": route(path="/a/b"),
            "regex": route(path_regex="/a/[a-z]+"),
            "prefix": route(path_prefix="/a/b"),
        }
    )
    assert name_of(table, "GET", "/a/b") == "exact"
    assert name_of(table, "GET", "/a/c") == "regex"
    assert name_of(table, "GET", "/a/b/1") == "prefix"


def test_host_first_then_method_then_headers() -> None:
    table = RouteTable(
        {
            "any": route(path_prefix="/"),
            "wild": route(host="*.example.com"),
            "exact": route(host="api.example.com", path_prefix="/x"),
            "post": route(path_prefix="/", methods=("POST",)),
            "beta": route(path_prefix="/", headers=(HeaderMatch(name="X-Beta", exact="1"),)),
        }
    )
    assert name_of(table, "GET", "/x", host="API.example.com:8443") == "exact"
    assert name_of(table, "GET", "/y", host="api.example.com") == "wild"
    assert name_of(table, "GET", "/y", host="example.com") == "any"
    assert name_of(table, "POST", "/y") == "post"
    assert name_of(table, "GET", "/y", headers={"x-beta": "1"}) == "beta"


def test_query_conditions_and_no_route() -> None:
    table = RouteTable(
        {
            "v2": route(path="/q", query=(QueryMatch(name="v", exact="2"),)),
            "present": route(path="/q", query=(QueryMatch(name="debug"),)),
        }
    )
    assert name_of(table, "GET", "/q", query="v=2&v=3") == "v2"
    assert name_of(table, "GET", "/q", query="debug") == "present"
    assert name_of(table, "GET", "/q", query="v=3") is None
    assert name_of(table, "GET", "/other") is None


def test_regex_captures_come_back_with_the_match() -> None:
    table = RouteTable({"user": route(path_regex=r"/users/(?P<id>\d+)")})
    found = table.match("GET", "/users/42")
    assert found is not None
    assert dict(found.captures) == {"id": "42"}
    assert table.match("GET", "/users/42/x") is None


def test_a_match_without_captures_is_built_once() -> None:
    table = RouteTable({"a": route(path_prefix="/a")})
    assert table.match("GET", "/a/1") is table.match("GET", "/a/2")


def test_inverted_header_condition_requires_absence() -> None:
    table = RouteTable(
        {"no-auth": route(headers=(HeaderMatch(name="authorization", invert=True),))}
    )
    assert name_of(table, "GET", "/") == "no-auth"
    assert name_of(table, "GET", "/", headers={"authorization": "x"}) is None


SEGMENTS = st.sampled_from(["a", "b", "ab", ""])
PATHS = st.lists(SEGMENTS, min_size=0, max_size=3).map(lambda s: "/" + "/".join(s))
ROUTE_PATHS = st.sampled_from(["/", "/a", "/a/", "/a/b", "/ab", "/b", "/a/b/"])
HOSTS = st.sampled_from(["x.com", "a.x.com", "b.a.x.com", "X.com:80", "y.org"])
ROUTE_HOSTS = st.sampled_from([None, None, None, "x.com", "a.x.com", "*.x.com", "*.a.x.com"])
METHODS = st.sampled_from(["GET", "POST", "PUT"])
ROUTE_METHODS = st.sampled_from([(), (), ("GET",), ("GET", "POST"), ("PUT",)])
ROUTE_HEADERS = st.sampled_from(
    [
        (),
        (),
        (HeaderMatch(name="x-a"),),
        (HeaderMatch(name="x-a", exact="1"),),
        (HeaderMatch(name="x-b", invert=True),),
        (HeaderMatch(name="x-a", prefix="1"), HeaderMatch(name="x-b", exact="2")),
    ]
)
ROUTE_QUERIES = st.sampled_from(
    [(), (), (QueryMatch(name="q"),), (QueryMatch(name="q", exact="1"),)]
)


@st.composite
def route_matches(draw: st.DrawFn) -> RouteMatch:
    kind = draw(st.sampled_from(["path", "path_prefix", "path_prefix", "path_regex", None]))
    path = draw(ROUTE_PATHS)
    paths = {kind: path} if kind in ("path", "path_prefix") else {}
    if kind == "path_regex":
        paths = {"path_regex": draw(st.sampled_from(["/a(/.*)?", "/[ab]+", "/.*/b"]))}
    return RouteMatch(
        **paths,  # type: ignore[arg-type]
        host=draw(ROUTE_HOSTS),
        methods=draw(ROUTE_METHODS),
        headers=draw(ROUTE_HEADERS),
        query=draw(ROUTE_QUERIES),
    )


REQUESTS = st.tuples(
    METHODS,
    PATHS,
    st.one_of(st.none(), HOSTS),
    st.dictionaries(st.sampled_from(["x-a", "x-b"]), st.sampled_from(["1", "2"])),
    st.sampled_from(["", "q=1", "q=2&r=1", "r"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(route_matches(), min_size=1, max_size=8), st.lists(REQUESTS, max_size=10))
def test_the_compiled_table_agrees_with_the_reference(
    matches: list[RouteMatch], requests: list[tuple[str, str, str | None, dict[str, str], str]]
) -> None:
    table = RouteTable({f"r{i}": Route(match=m, backends=BACKENDS) for i, m in enumerate(matches)})
    for method, path, host, headers, query in requests:
        found = table.match(method, path, host, headers, query)
        expected = reference_match(table, method, path, host, headers, query)
        assert (found.route if found else None) is expected


@given(
    st.lists(st.text(alphabet="/ab", max_size=5).map(lambda p: "/" + p), max_size=8),
    st.text(alphabet="/ab", max_size=8),
)
def test_the_trie_yields_exactly_the_matching_prefixes_longest_first(
    prefixes: list[str], path: str
) -> None:
    trie: PrefixTrie[str] = PrefixTrie()
    for prefix in prefixes:
        trie.add(prefix, prefix)
    found = [p for bucket in trie.candidates(path) for p in bucket]
    assert sorted(found) == sorted(p for p in prefixes if prefix_matches(p, path))
    assert [len(p) for p in found] == sorted((len(p) for p in found), reverse=True)


@settings(max_examples=100, deadline=None)
@given(st.lists(route_matches(), min_size=1, max_size=6), REQUESTS, st.randoms())
def test_the_order_routes_are_given_in_never_matters(
    matches: list[RouteMatch],
    request: tuple[str, str, str | None, dict[str, str], str],
    rnd: random.Random,
) -> None:
    named = [(f"r{i}", Route(match=m, backends=BACKENDS)) for i, m in enumerate(matches)]
    shuffled = list(named)
    rnd.shuffle(shuffled)
    first = RouteTable(named).match(*request)
    again = RouteTable(shuffled).match(*request)
    assert (first.name if first else None) == (again.name if again else None)
