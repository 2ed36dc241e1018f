"""crossway.yaml loading: every kind of problem reported with its line, column and path."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from crossway.up import UpFileError, load_file, load_text
from crossway.up.load import find_cycle, render_path
from crossway.up.spec import json_schema_text

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "crossway.schema.json"


def problems(text: str, folder: Path | None = None) -> list[str]:
    with pytest.raises(UpFileError) as caught:
        load_text(textwrap.dedent(text), file="crossway.yaml", folder=folder)
    return str(caught.value).splitlines()


def test_a_minimal_file_gets_the_defaults() -> None:
    spec = load_text("version: 1\nservices:\n  web:\n    command: python -m http.server ${PORT}\n")
    web = spec.services["web"]
    assert (web.replicas, web.restart, web.stop_grace, web.listen) == (1, "on-failure", 10.0, True)
    assert (spec.control_plane.port, spec.gateway.port, spec.gateway.admin_port) == (
        7700,
        7780,
        7790,
    )


def test_durations_and_env_values_are_normalised() -> None:
    spec = load_text(
        textwrap.dedent("""\
        version: 1
        services:
          api:
            command: [app]
            env: {DEBUG: 1, VERBOSE: true}
            stop_grace: 1m30s
            health: {http: /healthz, interval: 500ms, start_period: 5}
        """)
    )
    api = spec.services["api"]
    assert api.env == {"DEBUG": "1", "VERBOSE": "true"}
    assert api.stop_grace == 90.0
    assert api.health is not None
    assert (api.health.interval, api.health.start_period) == (0.5, 5.0)


def test_a_value_out_of_range_names_line_column_and_path() -> None:
    found = problems("""\
        version: 1
        services:
          orders:
            command: run
            replicas: 0
        """)
    assert found == ["crossway.yaml:5:15: services.orders.replicas: must be >= 1"]


def test_every_problem_is_reported_not_only_the_first() -> None:
    found = problems("""\
        version: 2
        services:
          orders:
            command: ""
            replicas: 0
            bogus: 1
            restart: sometimes
          inventory:
            command: 3
            port: 80000
        """)
    assert found == [
        "crossway.yaml:1:10: version: must be 1",
        "crossway.yaml:4:14: services.orders.command: must not be empty",
        "crossway.yaml:5:15: services.orders.replicas: must be >= 1",
        "crossway.yaml:6:5: services.orders.bogus: unknown field",
        "crossway.yaml:7:14: services.orders.restart: must be 'always', 'on-failure' or 'never'",
        "crossway.yaml:9:14: services.inventory.command: must be a string or a list of strings",
        "crossway.yaml:10:11: services.inventory.port: must be <= 65535",
    ]


def test_a_missing_field_points_at_the_mapping_that_should_hold_it() -> None:
    found = problems("""\
        version: 1
        services:
          orders:
            replicas: 2
        config:
          - group: shop
        """)
    assert found == [
        "crossway.yaml:4:5: services.orders.command: is required",
        "crossway.yaml:6:5: config[0].key: is required",
    ]


def test_fields_that_exclude_each_other() -> None:
    found = problems("""\
        version: 1
        services:
          a:
            command: a
            port: 8000
            replicas: 2
          b:
            command: b
            listen: false
            port: 8001
          c:
            command: c
            health: {http: healthz}
        config:
          - {group: g, key: k}
        """)
    assert found == [
        "crossway.yaml:4:5: services.a: a fixed port only works with replicas: 1 (use port_range)",
        "crossway.yaml:8:5: services.b: listen: false takes no port, port_range or health",
        "crossway.yaml:13:20: services.c.health.http: "
        "must be a path starting with /, e.g. /healthz",
        "crossway.yaml:15:5: config[0]: give exactly one of file or content",
    ]


def test_unknown_dependencies_and_cycles_name_the_services() -> None:
    found = problems("""\
        version: 1
        services:
          web:
            command: web
            depends_on: [orders, nope]
          orders:
            command: orders
            depends_on: [payments]
          payments:
            command: payments
            depends_on: [orders]
        """)
    assert found == [
        "crossway.yaml:5:26: services.web.depends_on[1]: unknown service 'nope'",
        "crossway.yaml:8:17: services.orders.depends_on: dependency cycle: "
        "orders -> payments -> orders",
    ]


def test_bad_names_ports_claimed_twice_and_missing_seed_files(tmp_path: Path) -> None:
    found = problems(
        """\
        version: 1
        services:
          Orders:
            command: a
          gateway:
            command: b
          web:
            command: c
            port: 7700
        config:
          - {group: g, key: k.yaml, file: missing.yaml}
        """,
        folder=tmp_path,
    )
    assert found == [
        "crossway.yaml:4:5: services.Orders: a service name is lowercase letters, digits and -",
        "crossway.yaml:6:5: services.gateway: 'gateway' is reserved for crossway's own process",
        "crossway.yaml:9:11: services.web.port: port 7700 is also used by the control plane",
        "crossway.yaml:11:35: config[0].file: no such file: missing.yaml",
    ]


def test_yaml_syntax_errors_and_wrong_top_level() -> None:
    assert problems("version: 1\nservices: [\n") == [
        "crossway.yaml:3:1: not valid YAML: expected the node content, but found '<stream end>'"
    ]
    assert problems("- 1\n") == ["crossway.yaml:1:1: expected a mapping with version: 1"]
    assert problems("version: 1\n") == ["crossway.yaml:1:1: services: is required"]


def test_load_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "crossway.yaml"
    path.write_text("version: 1\nservices:\n  a:\n    command: a\n    stop_grace: soon\n")
    with pytest.raises(UpFileError) as caught:
        load_file(path)
    assert str(caught.value) == (
        f"{path}:5:17: services.a.stop_grace: not a duration: 'soon' (use e.g. 500ms, 10s, 1m30s)"
    )
    with pytest.raises(UpFileError, match="no such file"):
        load_file(tmp_path / "absent.yaml")


def test_find_cycle_and_paths() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": []}) == []
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["zzz"]}) == []
    assert render_path(["services", "a", "depends_on", 0]) == "services.a.depends_on[0]"


def test_the_committed_json_schema_is_up_to_date() -> None:
    assert SCHEMA_FILE.read_text() == json_schema_text(), (
        "schemas/crossway.schema.json is out of date; regenerate it with\n"
        "  .venv/bin/python -c 'from crossway.up.spec import json_schema_text as s; "
        'print(s(), end="")\' > schemas/crossway.schema.json'
    )
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["required"] == ["version", "services"]
    assert "replicas" in schema["$defs"]["ServiceSpec"]["properties"]


def test_routes_and_policies_are_checked_as_the_control_plane_checks_them() -> None:
    found = problems("""\
        version: 1
        services:
          web:
            command: web
        routes:
          shop:
            match: {path_prefix: /}
            backends:
              - {service: web, weight: heavy}
        policies:
          web:
            retries: {attempts: -1}
          orders:
            nope: 1
        """)
    assert found == [
        "crossway.yaml:9:32: routes.shop.backends[0].weight: expected `int`, got `str`",
        "crossway.yaml:12:25: policies.web.retries.attempts: must be between 1 and 10, got -1",
        "crossway.yaml:14:11: policies.orders.nope: unknown field `nope`",
    ]


def test_the_demo_shop_file_loads() -> None:
    demo = Path(__file__).resolve().parents[2] / "examples" / "shop" / "crossway.yaml"
    if not demo.is_file():
        pytest.skip("no examples/shop in this checkout")
    spec = load_file(demo)
    assert {"web", "orders", "inventory", "payments"} <= set(spec.services)


def test_dependency_problems_come_with_the_field_problems() -> None:
    found = problems("""\
        version: 1
        services:
          web:
            command: web
            replicas: -1
            depends_on: [nope]
        """)
    assert found == [
        "crossway.yaml:5:15: services.web.replicas: must be >= 1",
        "crossway.yaml:6:18: services.web.depends_on[0]: unknown service 'nope'",
    ]


def test_a_bare_on_key_gets_a_hint_and_statuses_loads() -> None:
    text = """\
        version: 1
        services:
          api: {command: app}
        policies:
          api:
            retries:
              on: [500]
        """
    assert problems(text) == [
        "crossway.yaml:7:7: policies.api.retries: unknown field `true` "
        "(a bare `on:` is the boolean true in YAML: write `statuses:`)"
    ]
    fixed = load_text(textwrap.dedent(text.replace(" on:", " statuses:")))
    assert fixed.policies["api"]["retries"] == {"statuses": [500]}
