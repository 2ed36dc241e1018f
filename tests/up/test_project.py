"""A crossway.yaml resolved into what `up` runs: order, paths, overrides, environment."""

from __future__ import annotations

from pathlib import Path

from crossway.up.project import (
    Overrides,
    command_line,
    health_of,
    load_project,
    start_order,
    stop_order,
    substitute,
)
from crossway.up.run import gateway_spec, service_spec


def test_dependencies_start_first_otherwise_file_order() -> None:
    deps = {
        "web": ["orders"],
        "orders": ["inventory", "payments"],
        "inventory": [],
        "payments": [],
        "traffic": ["web"],
    }
    order = start_order(deps)
    assert order == ["inventory", "payments", "orders", "web", "traffic"]
    assert stop_order(tuple(order)) == ["traffic", "web", "orders", "payments", "inventory"]
    assert start_order({"b": [], "a": []}) == ["b", "a"]


def test_commands_and_substitution() -> None:
    assert substitute("--port ${PORT} ${OTHER}", {"PORT": "8101"}) == "--port 8101 ${OTHER}"


def test_a_project_resolves_paths_overrides_and_environment(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    file = tmp_path / "crossway.yaml"
    file.write_text(
        "version: 1\n"
        "services:\n"
        "  api:\n"
        "    command: \"uvicorn api:app --port '${PORT}'\"\n"
        "    cwd: app\n"
        "    labels: {version: v2, tier: web}\n"
        "    zone: eu-1\n"
        "    port_range: 8100-8110\n"
        "  worker:\n"
        "    command: [python, work.py]\n"
        "    listen: false\n"
        "    depends_on: [api]\n"
    )
    project = load_project(file, Overrides(control_port=17001, gateway_port=17002))
    assert (project.name, project.control_port, project.gateway_port, project.admin_port) == (
        tmp_path.name,
        17001,
        17002,
        7790,
    )
    assert project.data_dir == (tmp_path / ".crossway").resolve()
    assert project.order == ("api", "worker")
    api = service_spec(project, "api")
    assert command_line(project.service("api")) == ["uvicorn", "api:app", "--port", "${PORT}"]
    assert api.cwd == (tmp_path / "app").resolve()
    assert api.port_range == (8100, 8110)
    assert api.sdk_env["CROSSWAY_URL"] == "http://127.0.0.1:17001"
    assert api.sdk_env["CROSSWAY_LABELS"] == "version=v2,tier=web"
    assert api.sdk_env["CROSSWAY_ZONE"] == "eu-1"
    assert api.health is not None
    assert api.health.tcp
    worker = service_spec(project, "worker")
    assert (worker.listen, worker.health) == (False, None)
    assert health_of(project.service("worker")) is None
    gateway = gateway_spec(project)
    assert gateway.service == "gateway"
    assert "--control-plane" in gateway.argv
    assert "17002" in gateway.argv
