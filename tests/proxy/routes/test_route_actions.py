import random
from collections import Counter
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from crossway.proxy.routes import (
    Backend,
    Cors,
    DirectResponse,
    Fault,
    FaultAbort,
    FaultDelay,
    HeaderEdits,
    HeaderMatch,
    HeaderRoute,
    Mirror,
    Redirect,
    Rewrite,
    Route,
    RouteMatch,
)
from crossway.proxy.routes.actions import (
    Decision,
    HeaderEditor,
    LocalResponse,
    WeightedSplit,
    compile_actions,
    decide,
    fault_decision,
    response_headers,
    rewrite_path,
    should_mirror,
)
from crossway.proxy.routes.table import RouteTable

ONE = (Backend(service="a"),)


def draws(*values: float) -> Iterator[float]:
    return iter(values)


def run(
    route: Route,
    *,
    method: str = "GET",
    path: str = "/x",
    query: str = "",
    headers: dict[str, str] | None = None,
    rng_values: tuple[float, ...] = (0.5,) * 4,
    captures: dict[str, str] | None = None,
) -> Decision:
    values = draws(*rng_values)
    return decide(
        compile_actions(route),
        captures or {},
        method=method,
        scheme="http",
        host="gw.local:7780",
        path=path,
        query=query,
        headers=headers or {},
        rng=lambda: next(values),
    )


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=6).filter(any))
def test_weights_are_honoured_exactly_over_a_full_grid(weights: list[int]) -> None:
    backends = [Backend(service=f"s{i}", weight=w) for i, w in enumerate(weights)]
    split = WeightedSplit(backends)
    total = sum(weights)
    picks = Counter(split.pick((k + 0.5) / total).service for k in range(total))
    assert picks == Counter({f"s{i}": w for i, w in enumerate(weights) if w})


def test_a_90_10_split_is_honoured_statistically() -> None:
    split = WeightedSplit(
        [Backend(service="main", weight=90), Backend(service="canary", weight=10)]
    )
    rng = random.Random(7)
    picks = Counter(split.pick(rng.random()).service for _ in range(20_000))
    assert 0.085 < picks["canary"] / 20_000 < 0.115


def test_the_edge_draws_stay_in_range() -> None:
    split = WeightedSplit([Backend(service="a", weight=1), Backend(service="b", weight=1)])
    assert split.pick(0.0).service == "a"
    assert split.pick(0.999999999).service == "b"


def test_header_routes_take_precedence_over_the_split() -> None:
    route = Route(
        backends=ONE,
        header_routes=(
            HeaderRoute(
                headers=(HeaderMatch(name="x-beta", exact="1"),),
                backends=(Backend(service="beta"),),
            ),
        ),
    )
    assert run(route, headers={"x-beta": "1"}).backend == Backend(service="beta")
    assert run(route, headers={"x-beta": "0"}).backend == ONE[0]


def test_prefix_rewrite_and_strip() -> None:
    def rewritten(prefix: str, to: str, path: str) -> str:
        route = Route(
            match=RouteMatch(path_prefix=prefix), backends=ONE, rewrite=Rewrite(prefix=to)
        )
        return rewrite_path(compile_actions(route), path, {})

    assert rewritten("/api", "", "/api/orders") == "/orders"
    assert rewritten("/api", "", "/api") == "/"
    assert rewritten("/api", "/", "/api/orders") == "/orders"
    assert rewritten("/api", "/v2", "/api/orders") == "/v2/orders"
    assert rewritten("/api/", "/v2/", "/api/orders") == "/v2/orders"


def test_path_rewrite_with_captures() -> None:
    route = Route(
        match=RouteMatch(path_regex=r"/users/(?P<id>\d+)/(?P<rest>.*)"),
        backends=ONE,
        rewrite=Rewrite(path="/v2/u/{id}?{rest}"),
    )
    table = RouteTable({"u": route})
    found = table.match("GET", "/users/42/orders")
    assert found is not None
    assert (
        rewrite_path(found.route.actions, "/users/42/orders", found.captures) == "/v2/u/42?orders"
    )


def test_header_edits_remove_then_set_then_add() -> None:
    editor = HeaderEditor(HeaderEdits(set={"X-Env": "prod"}, add={"Via": "gw"}, remove=("Cookie",)))
    edited = editor.apply([("cookie", "a"), ("X-ENV", "dev"), ("via", "1.1 x"), ("accept", "*/*")])
    assert edited == [("via", "1.1 x"), ("accept", "*/*"), ("x-env", "prod"), ("via", "gw")]


def test_redirect_keeps_what_it_does_not_change() -> None:
    route = Route(redirect=Redirect(scheme="https", port=443, status=301))
    decision = run(route, path="/a", query="b=1")
    assert decision.local == LocalResponse(301, (("location", "https://gw.local:443/a?b=1"),))
    route = Route(redirect=Redirect(scheme="https"))
    decision = run(route, path="/a")
    assert decision.local == LocalResponse(302, (("location", "https://gw.local/a"),))
    route = Route(redirect=Redirect(host="new.example", path="/n", strip_query=True))
    decision = run(route, path="/a", query="b=1")
    assert decision.local == LocalResponse(302, (("location", "http://new.example/n"),))


def test_direct_response() -> None:
    decision = run(Route(direct_response=DirectResponse(status=418, body="teapot")))
    assert decision.local is not None
    assert decision.local.status == 418
    assert decision.local.body == b"teapot"
    assert ("content-type", "text/plain; charset=utf-8") in decision.local.headers


def test_cors_preflight_is_answered_before_anything_else() -> None:
    cors = Cors(allow_origins=("https://app.example",), allow_headers=("x-token",), max_age="1m")
    route = Route(backends=ONE, cors=cors, fault=Fault(abort=FaultAbort(status=500)))
    preflight = {"origin": "https://app.example", "access-control-request-method": "PUT"}
    decision = run(route, method="OPTIONS", headers=preflight)
    assert decision.local is not None
    assert decision.local.status == 204
    headers = dict(decision.local.headers)
    assert headers["access-control-allow-origin"] == "https://app.example"
    assert headers["access-control-allow-headers"] == "x-token"
    assert headers["access-control-max-age"] == "60"
    other = dict(preflight, origin="https://evil.example")
    assert run(route, method="OPTIONS", headers=other).local == LocalResponse(403)


def test_cors_response_headers() -> None:
    policy = compile_actions(Route(backends=ONE, cors=Cors(expose_headers=("x-id",)))).cors
    assert policy is not None
    assert policy.response_headers(None) == []
    assert dict(policy.response_headers("https://a")) == {
        "access-control-allow-origin": "*",
        "access-control-expose-headers": "x-id",
    }


def test_fault_decisions_follow_the_draws() -> None:
    fault = Fault(delay=FaultDelay(duration="2s", percent=50), abort=FaultAbort(percent=10))
    assert fault_decision(fault, iter([0.4, 0.05]).__next__).delay == 2.0
    assert fault_decision(fault, iter([0.4, 0.05]).__next__).abort == 503
    hit = fault_decision(fault, iter([0.6, 0.2]).__next__)
    assert (hit.delay, hit.abort) == (0.0, None)
    decision = run(Route(backends=ONE, fault=fault), rng_values=(0.1, 0.01))
    assert decision.local == LocalResponse(503)
    assert decision.delay == 2.0


@given(st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=1, exclude_max=True))
def test_mirroring_takes_exactly_its_percent_of_draws(percent: float, u: float) -> None:
    assert should_mirror(Mirror(service="shadow", percent=percent), lambda: u) == (
        u * 100 < percent
    )
    assert not should_mirror(None, lambda: u)


def test_forwarding_decision_carries_backend_path_and_mirror() -> None:
    route = Route(
        match=RouteMatch(path_prefix="/api"),
        backends=(Backend(service="main", weight=9), Backend(service="canary", weight=1)),
        rewrite=Rewrite(prefix=""),
        mirror=Mirror(service="shadow", percent=50),
    )
    decision = run(route, path="/api/x", rng_values=(0.95, 0.2))
    assert decision == Decision(None, 0.0, Backend(service="canary", weight=1), "/x", "shadow")


def test_a_capture_that_did_not_take_part_rewrites_as_empty() -> None:
    route = Route(
        match=RouteMatch(path_regex=r"/files(?:/(?P<name>\w+))?"),
        backends=ONE,
        rewrite=Rewrite(path="/store/{name}"),
    )
    found = RouteTable({"f": route}).match("GET", "/files")
    assert found is not None
    assert rewrite_path(found.route.actions, "/files", found.captures) == "/store/"


def test_a_route_with_cors_takes_the_preflights_of_its_methods() -> None:
    route = Route(match=RouteMatch(path="/x", methods=("PUT",)), backends=ONE, cors=Cors())
    table = RouteTable(
        {"x": route, "plain": Route(match=RouteMatch(methods=("PUT",)), backends=ONE)}
    )
    found = table.match("OPTIONS", "/x")
    assert found is not None
    assert found.name == "x"
    assert table.match("OPTIONS", "/y") is None


def test_response_headers_get_the_edits_then_cors() -> None:
    route = Route(
        backends=ONE,
        response_headers=HeaderEdits(remove=("server",), add={"x-served-by": "gw"}),
        cors=Cors(),
    )
    actions = compile_actions(route)
    upstream = [("Server", "nginx"), ("Access-Control-Allow-Origin", "*.evil"), ("a", "1")]
    assert response_headers(actions, upstream, "https://app") == [
        ("a", "1"),
        ("x-served-by", "gw"),
        ("access-control-allow-origin", "*"),
    ]
    plain = compile_actions(Route(backends=ONE))
    assert response_headers(plain, upstream, "https://app") is upstream


def test_local_answers_carry_cors_headers_for_allowed_origins() -> None:
    route = Route(direct_response=DirectResponse(body="hi"), cors=Cors())
    answer = run(route, headers={"origin": "https://app"}).local
    assert answer is not None
    assert ("access-control-allow-origin", "*") in answer.headers
    bare = run(route).local
    assert bare is not None
    assert all(not name.startswith("access-control") for name, _ in bare.headers)
