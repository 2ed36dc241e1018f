"""Prometheus rules and the Grafana dashboard: shape, and `promtool check rules`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from crossway.telemetry.alerts.export import (
    grafana_dashboard,
    prom_duration,
    prometheus_rules,
    recording_rules,
)
from crossway.telemetry.alerts.rules import parse_rules
from crossway.testing.services import require

RULES = r"""
rules:
  - name: orders-success
    expr: success_rate{service="orders"} < 0.99 for 2m
    severity: page
    labels: {team: shop}
    annotations: {summary: "{{ $labels.service }} success at {{ $value }}"}
  - {name: slow, expr: p99_latency > 500ms, for: 5m, window: 5m}
  - {name: p50, expr: 'p50_latency{route=~"/api/.*"} > 100ms'}
  - {name: edge, expr: 'error_rate{caller="gateway", service="orders"} > 5%', window: 30s}
  - {name: quiet, expr: 'rps{service="a\"b"} == 0'}
  - {name: errors, expr: 'error_rate > 0.1'}
  - {name: hosts, expr: 'healthy_instances{service="orders"} < 2'}
  - {name: none, expr: 'instances == 0', for: 90s}
"""


def test_recording_rules_cover_every_level_and_signal() -> None:
    names = [r["record"] for r in recording_rules()]
    assert len(names) == len(set(names)) == 15
    for prefix in ("service:http_server", "service_route:http_server", "service_peer:http_client"):
        assert f"{prefix}_requests:rate1m" in names
        assert f"{prefix}_success:ratio_rate1m" in names
        for q in ("p50", "p95", "p99"):
            assert f"{prefix}_request_duration_seconds:{q}_1m" in names


def test_alerting_rules_mirror_the_crossway_rules() -> None:
    document = yaml.safe_load(prometheus_rules(parse_rules(RULES)))
    recording, alerting = document["groups"]
    assert recording["name"] == "crossway-golden-signals"
    alerts = {r["alert"]: r for r in alerting["rules"]}
    success = alerts["orders-success"]
    assert success["expr"] == 'service:http_server_success:ratio_rate1m{service="orders"} < 0.99'
    assert success["for"] == "2m"
    assert success["labels"] == {"severity": "page", "team": "shop"}
    assert "{{ $labels.service }}" in success["annotations"]["summary"]
    assert "[5m]" in alerts["slow"]["expr"]
    assert alerts["slow"]["expr"].endswith("> 0.5")
    edge = alerts["edge"]["expr"]
    assert 'service="gateway", peer_service="orders"' in edge  # caller/callee renamed
    assert "[30s]" in edge
    assert 'status="passing", service="orders"' in alerts["hosts"]["expr"]
    assert alerts["none"]["for"] == "90s"
    assert "for" not in alerts["quiet"]


def test_without_rules_only_recording_rules_are_written() -> None:
    document = yaml.safe_load(prometheus_rules())
    assert [g["name"] for g in document["groups"]] == ["crossway-golden-signals"]


def test_prometheus_durations_use_whole_units() -> None:
    assert prom_duration(120) == "2m"
    assert prom_duration(90) == "90s"
    assert prom_duration(0.5) == "500ms"
    assert prom_duration(7200) == "2h"
    assert prom_duration(86400) == "1d"
    assert prom_duration(1.5) == "1500ms"


def test_exported_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool is not installed (run scripts/ensure-prometheus)")
    assert promtool is not None
    path = tmp_path / "crossway.rules.yml"
    path.write_text(prometheus_rules(parse_rules(RULES)))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 23 rules found" in result.stdout


def test_grafana_dashboard_has_the_golden_signal_panels() -> None:
    dashboard = json.loads(json.dumps(grafana_dashboard()))
    titles = [p["title"] for p in dashboard["panels"]]
    assert titles[:3] == ["Request rate", "Success rate", "Latency p50 / p95 / p99"]
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    recorded = {r["record"] for r in recording_rules()}
    for expr in exprs:
        assert expr.split("{")[0] in recorded
    latency = dashboard["panels"][2]
    assert [t["refId"] for t in latency["targets"]] == ["A", "B", "C"]
    assert latency["fieldConfig"]["defaults"]["unit"] == "s"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert "label_values(service:http_server_requests:rate1m, service)" in str(variables["service"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("panel", range(6))
def test_panels_do_not_overlap(panel: int) -> None:
    panels = grafana_dashboard()["panels"]
    me = panels[panel]["gridPos"]
    for other in panels[:panel]:
        pos = other["gridPos"]
        overlap_x = me["x"] < pos["x"] + pos["w"] and pos["x"] < me["x"] + me["w"]
        overlap_y = me["y"] < pos["y"] + pos["h"] and pos["y"] < me["y"] + me["h"]
        assert not (overlap_x and overlap_y)
