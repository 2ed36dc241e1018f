from pathlib import Path

import pytest

from crossway.proxy.routes.config import ConfigFileError, GatewayConfig, load_config, parse_config
from crossway.proxy.routes.model import Backend, Route

GOOD = """\
version: v7
routes:
  orders:
    match: {path_prefix: /orders}
    backends:
      - {service: orders, weight: 90}
      - {service: orders-canary, weight: 10}
    timeout: 5s
    retries: {attempts: 2, conditions: [connect-failure, 5xx]}
  health:
    match: {path: /healthz}
    direct_response: {status: 200, body: ok}
"""


def test_a_good_file_loads_into_a_compiled_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.version == "v7"
    assert sorted(config.routes) == ["health", "orders"]
    assert config.routes["orders"].retries.conditions == ("connect-failure", "5xx")
    found = config.table.match("GET", "/orders/1")
    assert found is not None
    assert found.name == "orders"


def test_without_a_version_the_digest_of_the_file_is_used() -> None:
    first = parse_config(GOOD.replace("version: v7\n", ""))
    again = parse_config(GOOD.replace("version: v7\n", ""))
    other = parse_config(GOOD.replace("version: v7\n", "").replace("90", "80"))
    assert first.version == again.version != other.version
    assert parse_config("").routes == {}


def error_of(text: str) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, source="gw.yaml")
    return caught.value


@pytest.mark.parametrize(
    ("needle", "replacement", "line", "field"),
    [
        ("weight: 10}", "weight: -1}", 7, "$.routes.orders.backends[1].weight"),
        ("weight: 10}", "weight: ten}", 7, "$.routes.orders.backends[1].weight"),
        ("{path_prefix: /orders}", "{path_prefx: /orders}", 4, "$.routes.orders.match.path_prefx"),
        ("timeout: 5s", "timeout: soon", 8, "$.routes.orders.timeout"),
        ("attempts: 2,", "attempts: 0,", 9, "$.routes.orders.retries.attempts"),
        ("status: 200,", "status: 99,", 12, "$.routes.health.direct_response.status"),
        ("  health:", "  'bad name':", 10, "$.routes.bad name"),
        ("version: v7", "versoin: v7", 1, "$.versoin"),
    ],
)
def test_errors_name_file_line_and_field(
    needle: str, replacement: str, line: int, field: str
) -> None:
    assert needle in GOOD
    error = error_of(GOOD.replace(needle, replacement))
    assert error.details["file"] == "gw.yaml"
    assert error.details["line"] == line
    assert error.details["field"] == field
    assert error.message.startswith(f"gw.yaml:{line}: {field.removeprefix('$.')}: ")
    assert " - at `" not in error.message


def test_yaml_syntax_errors_name_the_line() -> None:
    error = error_of("routes:\n  a: [1,\n  b: 2\n")
    assert error.details["line"] >= 2
    assert "not valid YAML" in error.message


def test_the_file_must_be_a_mapping_of_routes() -> None:
    assert error_of("- 1\n").details["field"] == "$"
    assert error_of("routes: [1]\n").details["field"] == "$.routes"


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as caught:
        load_config(tmp_path / "missing.yaml")
    assert "cannot read" in caught.value.message


def test_a_snapshot_is_immutable_and_compiled_once() -> None:
    routes = {"a": Route(backends=(Backend(service="a"),))}
    config = GatewayConfig(routes, "1")
    routes.clear()
    assert list(config.routes) == ["a"]
    assert config.table is config.table
    with pytest.raises(TypeError):
        config.routes["b"] = routes  # type: ignore[index]


def test_the_example_configuration_loads() -> None:
    example = Path(__file__).parents[3] / "examples" / "gateway.yaml"
    config = load_config(example)
    assert len(config.routes) == 6
    assert config.routes["orders"].timeout == "5s"


def test_a_key_given_twice_is_an_error() -> None:
    error = error_of(GOOD + "  orders:\n    direct_response: {}\n")
    assert error.details["line"] == 13
    assert error.message == "gw.yaml:13: routes.orders: duplicate key"
    assert error.details["field"] == "$.routes.orders"
